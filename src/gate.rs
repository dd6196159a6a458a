//! A future polled only when it woke its task itself.
//!
//! A connection's task is woken for many reasons: the client's socket, the
//! upstream's, a timer, the stop signal. Each wake-up polls the whole task,
//! and polling every part of it each time costs more than some parts are
//! worth: the connection's deadlines and the stop signal (a timer, a
//! `Notify` and a `watch` receiver, each re-registering its waker) were
//! polled on each of the task's two or more polls per request, for
//! something that happens once a second at most. `Gated` gives the part a
//! waker of its own, which marks the gate and wakes the task, and polls the
//! part only when its gate was marked.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// A future polled only when it woke its task itself (and on the first
/// poll), however often the task that holds it is polled for other reasons.
pub struct Gated<F> {
    inner: Pin<Box<F>>,
    gate: Arc<Gate>,
    waker: Waker,
}

struct Gate {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> Gated<F> {
    pub fn new(inner: F) -> Self {
        // Marked from the start: the first poll reaches the future.
        let gate = Arc::new(Gate { woken: AtomicBool::new(true), task: AtomicWaker::new() });
        Gated { inner: Box::pin(inner), waker: Waker::from(gate.clone()), gate }
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        // Registered before the mark is read: a wake-up in between is not lost.
        this.gate.task.register(cx.waker());
        if !this.gate.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner.as_mut().poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A future that counts its polls and is ready on the third.
    struct Polls(usize);
    impl Future for Polls {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            self.0 += 1;
            if self.0 == 3 { Poll::Ready(()) } else { Poll::Pending }
        }
    }

    #[test]
    fn a_gated_future_is_polled_first_and_then_only_when_woken() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let task = Waker::from(count.clone());
        let mut cx = Context::from_waker(&task);
        let mut f = Gated::new(Polls(0));
        assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
        for _ in 0..5 {
            assert!(Pin::new(&mut f).poll(&mut cx).is_pending(), "not woken: not polled");
        }
        assert_eq!(f.inner.0, 1);
        f.waker.wake_by_ref();
        assert_eq!(count.0.load(Ordering::Relaxed), 1, "its wake-up wakes the task");
        assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
        assert_eq!(f.inner.0, 2);
        f.waker.wake_by_ref();
        assert!(Pin::new(&mut f).poll(&mut cx).is_ready());
    }
}
