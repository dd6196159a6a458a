//! A server-side TLS stream on rustls' unbuffered API, in place of
//! tokio-rustls. The buffered `ServerConnection` that tokio-rustls wraps
//! keeps a 4 KB receive buffer for the connection's whole life; with the
//! unbuffered API the buffers are ours, so a parked connection (see
//! `server.rs`) gives them back (`release_buffers`) and holds only the
//! session's keys and state.
//!
//! The adapter is a loop around `process_tls_records`: TLS bytes read from
//! the socket go into `incoming`; the records rustls produces (handshake
//! messages, alerts, tickets, encrypted application data) go into
//! `outgoing`, which is written to the socket in order; decrypted
//! application data goes into `plain` until the reader takes it. Nothing is
//! written to the socket anywhere else, so records go out in the order
//! rustls made them.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The largest TLS record on the wire: 2^14 bytes of plaintext plus up to
/// 2,048 of expansion (TLS 1.2 allows that much) and the 5-byte header.
const MAX_RECORD: usize = 16_384 + 2_048 + 5;
/// The most `incoming` holds: a handshake message may span records, which
/// rustls joins in place, up to 64 KB (as its buffered API allows), plus
/// the record that completes it.
const MAX_INCOMING: usize = 0xffff + MAX_RECORD;
/// What a read from the socket asks for at least.
const READ_SIZE: usize = 4_096;
/// Application data encrypted per `poll_write`, at most: one full record,
/// so that `outgoing` never grows past one record's worth.
const MAX_WRITE: usize = 16_384;

pub struct TlsStream {
    io: TcpStream,
    conn: UnbufferedServerConnection,
    /// TLS bytes read from the socket that rustls has not consumed yet:
    /// the first `in_len` bytes. (All of it is initialised, so the socket
    /// reads straight into it.)
    incoming: Vec<u8>,
    in_len: usize,
    /// Decrypted application data not yet read; `plain_pos` is where the
    /// next read starts.
    plain: Vec<u8>,
    plain_pos: usize,
    /// TLS bytes to send; `out_pos` is how much of it the socket took.
    outgoing: Vec<u8>,
    out_pos: usize,
    /// The peer sent close_notify: the reader sees end-of-file once `plain`
    /// is drained.
    peer_closed: bool,
    /// The socket reached end-of-file.
    eof: bool,
    /// We queued our close_notify.
    closing: bool,
}

/// Where processing what has been read left the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// rustls needs more bytes from the peer (the handshake is not done).
    Read,
    /// Application data may be sent; more bytes may be read.
    Traffic,
    /// Both sides sent close_notify.
    Closed,
}

/// What to do when the connection reaches a state that allows it.
enum Op<'a> {
    None,
    Write(&'a [u8]),
    CloseNotify,
}

fn tls_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Completes a TLS handshake as the server on `io`.
pub async fn accept(io: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsStream> {
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut stream = TlsStream {
        io,
        conn,
        incoming: Vec::new(),
        in_len: 0,
        plain: Vec::new(),
        plain_pos: 0,
        outgoing: Vec::new(),
        out_pos: 0,
        peer_closed: false,
        eof: false,
        closing: false,
    };
    poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

impl TlsStream {
    /// The protocol the client chose by ALPN.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.io
    }

    /// Whether decrypted application data is waiting for the reader. (What
    /// `incoming` may still hold after a read is part of a record, which
    /// needs more bytes from the socket before it is of use.)
    pub fn has_buffered(&self) -> bool {
        self.plain_pos < self.plain.len()
    }

    /// Puts back decrypted data a reader took and did not use (what hyper
    /// had read past the end of its session): it is read again first.
    pub fn unread(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let rest = &self.plain[self.plain_pos..];
        let mut plain = Vec::with_capacity(data.len() + rest.len());
        plain.extend_from_slice(data);
        plain.extend_from_slice(rest);
        self.plain = plain;
        self.plain_pos = 0;
    }

    /// Frees the buffers that hold nothing, for a connection about to sit
    /// idle: they are allocated again when traffic resumes.
    pub fn release_buffers(&mut self) {
        if self.in_len == 0 {
            self.incoming = Vec::new();
        }
        if self.plain_pos >= self.plain.len() {
            self.plain = Vec::new();
            self.plain_pos = 0;
        }
        if self.out_pos >= self.outgoing.len() {
            self.outgoing = Vec::new();
            self.out_pos = 0;
        }
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let next = self.process(Op::None)?;
            ready!(self.poll_send(cx))?;
            match next {
                Next::Closed => return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into())),
                // A TLS 1.3 server may send before the client's Finished
                // has arrived: the handshake is done only when rustls says.
                Next::Traffic if !self.conn.is_handshaking() => return Poll::Ready(Ok(())),
                Next::Traffic | Next::Read => {
                    if self.peer_closed {
                        return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
                    }
                    if ready!(self.poll_fill(cx))? == 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the client closed during the TLS handshake",
                        )));
                    }
                }
            }
        }
    }

    /// Runs rustls over what has been read, until it needs more bytes or
    /// allows application data; then does `op`. Records rustls makes are
    /// appended to `outgoing`, application data to `plain`.
    fn process(&mut self, mut op: Op<'_>) -> io::Result<Next> {
        loop {
            let Self { conn, incoming, in_len, plain, outgoing, peer_closed, closing, .. } = self;
            let UnbufferedStatus { mut discard, state } = conn.process_tls_records(&mut incoming[..*in_len]);
            let state = match state {
                Ok(state) => state,
                Err(error) => {
                    consume(incoming, in_len, discard);
                    // The alert rustls queued for the peer, if it can go.
                    self.queue_alert();
                    return Err(tls_error(error));
                }
            };
            let next = match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        plain.extend_from_slice(record.payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    let start = outgoing.len();
                    let mut need = 1_024;
                    loop {
                        outgoing.resize(start + need, 0);
                        match encode.encode(&mut outgoing[start..]) {
                            Ok(n) => {
                                outgoing.truncate(start + n);
                                break;
                            }
                            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) if required_size > need => {
                                need = required_size;
                            }
                            Err(e) => {
                                outgoing.truncate(start);
                                return Err(tls_error(e.to_string()));
                            }
                        }
                    }
                    None
                }
                // What was encoded is in `outgoing`, sent before anything
                // queued after it.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::BlockedHandshake => Some(Next::Read),
                ConnectionState::PeerClosed => {
                    *peer_closed = true;
                    None
                }
                ConnectionState::Closed => {
                    *peer_closed = true;
                    Some(Next::Closed)
                }
                ConnectionState::WriteTraffic(mut traffic) => {
                    match std::mem::replace(&mut op, Op::None) {
                        Op::None => {}
                        Op::Write(data) => encrypt(outgoing, data, |d, out| traffic.encrypt(d, out))?,
                        Op::CloseNotify => {
                            encrypt(outgoing, &[], |_, out| traffic.queue_close_notify(out))?;
                            *closing = true;
                        }
                    }
                    Some(Next::Traffic)
                }
                // Early data is never enabled (`max_early_data_size` is 0).
                ConnectionState::ReadEarlyData(_) => return Err(tls_error("unexpected early data")),
                _ => return Err(tls_error("unexpected TLS state")),
            };
            consume(incoming, in_len, discard);
            if let Some(next) = next {
                return Ok(next);
            }
        }
    }

    /// After an error, the fatal alert rustls queued (best effort: sent if
    /// the socket takes it at once).
    fn queue_alert(&mut self) {
        for _ in 0..4 {
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    let start = self.outgoing.len();
                    self.outgoing.resize(start + 64, 0);
                    match encode.encode(&mut self.outgoing[start..]) {
                        Ok(n) => self.outgoing.truncate(start + n),
                        Err(_) => self.outgoing.truncate(start),
                    }
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                _ => break,
            }
        }
        while self.out_pos < self.outgoing.len() {
            match self.io.try_write(&self.outgoing[self.out_pos..]) {
                Ok(n) if n > 0 => self.out_pos += n,
                _ => break,
            }
        }
    }

    /// Reads more TLS bytes from the socket into `incoming`; 0 at end-of-file.
    /// (Through `poll_read`, which, unlike `try_read`, takes a short read
    /// as the socket drained and spares the system call that would say so.)
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // Upstream writes this worker holds back go out if they have waited
        // too long (a worker busy with handshakes never parks).
        crate::upstream_io::tick();
        if self.incoming.len() - self.in_len < READ_SIZE {
            if self.in_len >= MAX_INCOMING {
                // rustls refuses an oversized record or message before this.
                return Poll::Ready(Err(tls_error("TLS message too large")));
            }
            let grow = READ_SIZE.max(self.in_len);
            self.incoming.resize((self.in_len + grow).min(MAX_INCOMING + READ_SIZE), 0);
        }
        let mut buf = ReadBuf::new(&mut self.incoming[self.in_len..]);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        self.in_len += n;
        self.eof |= n == 0;
        Poll::Ready(Ok(n))
    }

    /// Writes all of `outgoing` to the socket.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.outgoing.clear();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }
}

/// Drops the first `n` bytes of the `len` read into `buf`.
fn consume(buf: &mut [u8], len: &mut usize, n: usize) {
    let n = n.min(*len);
    if n > 0 {
        buf.copy_within(n..*len, 0);
        *len -= n;
    }
}

/// Encrypts into the end of `outgoing`, growing it to what rustls needs.
fn encrypt(outgoing: &mut Vec<u8>, data: &[u8], mut f: impl FnMut(&[u8], &mut [u8]) -> Result<usize, EncryptError>) -> io::Result<()> {
    let start = outgoing.len();
    // Each record adds at most 22 bytes (header, tag, content type) in TLS 1.3, 29 in TLS 1.2.
    let mut need = data.len() + 64 * (data.len() / 16_384 + 1);
    loop {
        outgoing.resize(start + need, 0);
        match f(data, &mut outgoing[start..]) {
            Ok(n) => {
                outgoing.truncate(start + n);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) if required_size > need => need = required_size,
            Err(e) => {
                outgoing.truncate(start);
                return Err(tls_error(e.to_string()));
            }
        }
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_pos < this.plain.len() {
                let n = (this.plain.len() - this.plain_pos).min(buf.remaining());
                buf.put_slice(&this.plain[this.plain_pos..this.plain_pos + n]);
                this.plain_pos += n;
                if this.plain_pos == this.plain.len() {
                    this.plain.clear();
                    this.plain_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed || this.eof {
                return Poll::Ready(Ok(()));
            }
            let next = this.process(Op::None)?;
            // Records rustls answered with (a key update, say) go out now;
            // a socket that cannot take them yet is retried on the next write.
            if this.out_pos < this.outgoing.len() {
                let _ = this.poll_send(cx)?;
            }
            if this.plain_pos < this.plain.len() || this.peer_closed {
                continue;
            }
            if next == Next::Closed {
                return Poll::Ready(Ok(()));
            }
            ready!(this.poll_fill(cx))?;
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // What was encrypted before goes first: `outgoing` stays bounded.
        ready!(this.poll_send(cx))?;
        if this.closing {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let data = &data[..data.len().min(MAX_WRITE)];
        match this.process(Op::Write(data))? {
            Next::Traffic => {}
            Next::Read => return Poll::Ready(Err(tls_error("write before the TLS handshake completed"))),
            Next::Closed => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
        // Sent now if the socket takes it, else by the next write or flush.
        let _ = this.poll_send(cx)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            ready!(this.poll_send(cx))?;
            // close_notify; a connection rustls already closed just ends.
            let _ = this.process(Op::CloseNotify);
            this.closing = true;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A real TLS connection over loopback: the server side on this
    /// stream, the client on tokio-rustls.
    async fn pair() -> (TlsStream, tokio_rustls::client::TlsStream<TcpStream>) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("a certificate");
        let cert = ck.cert.der().clone();
        let key = rustls_pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).expect("a key");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .expect("a server config");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).expect("a root");
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connect = async {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let name = rustls_pki_types::ServerName::try_from("localhost").expect("a name");
            tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, tcp).await.expect("client handshake")
        };
        let accept = async {
            let (tcp, _) = listener.accept().await.expect("accept");
            accept(tcp, Arc::new(server)).await.expect("server handshake")
        };
        tokio::join!(accept, connect)
    }

    #[tokio::test]
    async fn unread_data_is_read_again_first_and_before_what_was_left() {
        let (mut server, mut client) = pair().await;
        client.write_all(b"hello world").await.expect("write");
        let mut head = [0u8; 5];
        server.read_exact(&mut head).await.expect("read");
        assert_eq!(&head, b"hello");
        // Put back more than was taken, as a session that parked would:
        // it comes first, then the rest of what was decrypted.
        server.unread(b"GET ");
        server.unread(b"");
        assert!(server.has_buffered());
        let mut all = [0u8; 10];
        server.read_exact(&mut all).await.expect("read");
        assert_eq!(&all, b"GET  world");
        assert!(!server.has_buffered());
        // And after the buffers were released, as a parked connection's are.
        server.release_buffers();
        server.unread(b"again");
        let mut again = [0u8; 5];
        server.read_exact(&mut again).await.expect("read");
        assert_eq!(&again, b"again");
        // The stream goes on as before.
        client.write_all(b"next").await.expect("write");
        let mut next = [0u8; 4];
        server.read_exact(&mut next).await.expect("read");
        assert_eq!(&next, b"next");
    }
}
