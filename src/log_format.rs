//! The plain-text log line, written for less: the same output as
//! tracing-subscriber's default `Full` format without colours, at about
//! half the instructions. Its formatters style every field name, level,
//! span and target through `nu_ansi_term` even when colours are off, and
//! its timer formats the whole date on every line; on the access log, one
//! line a request, that was most of what logging cost. A terminal (colours
//! on) and `log.format = "json"` keep tracing-subscriber's own formatters.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// `TIME LEVEL span{fields}:span{fields}: target: message fields`, as
/// tracing-subscriber's `Full` format writes it without colours.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainFormat;

impl<S, N> FormatEvent<S, N> for PlainFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        // A `log` record (rustls logs through the log crate) carries its
        // own level and target.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        if CachedTime.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        writer.write_str(match *meta.level() {
            Level::TRACE => " TRACE ",
            Level::DEBUG => " DEBUG ",
            Level::INFO => "  INFO ",
            Level::WARN => "  WARN ",
            Level::ERROR => " ERROR ",
        })?;
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                writer.write_str(span.metadata().name())?;
                seen = true;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    writer.write_char('{')?;
                    writer.write_str(&fields.fields)?;
                    writer.write_char('}')?;
                }
                writer.write_char(':')?;
            }
            if seen {
                writer.write_char(' ')?;
            }
        }
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

/// Fields as `name=value`, separated by spaces; the message bare.
/// Values are written as tracing-subscriber writes them: strings quoted
/// and escaped (`Debug`), `%` values as they display, and the message and
/// errors with terminal escape characters escaped.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainFields;

pub struct PlainVisitor<'a> {
    writer: Writer<'a>,
    empty: bool,
    result: fmt::Result,
}

impl<'a> MakeVisitor<Writer<'a>> for PlainFields {
    type Visitor = PlainVisitor<'a>;

    fn make_visitor(&self, writer: Writer<'a>) -> PlainVisitor<'a> {
        PlainVisitor { writer, empty: true, result: Ok(()) }
    }
}

impl PlainVisitor<'_> {
    fn write(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        let name = field.name();
        // A `log` record's metadata, already written as level and target.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.result = (|| {
            if !std::mem::take(&mut self.empty) {
                self.writer.write_char(' ')?;
            }
            if name != "message" {
                self.writer.write_str(name)?;
                self.writer.write_char('=')?;
            }
            self.writer.write_fmt(value)
        })();
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, format_args!("{}", Escaped(&value as &dyn fmt::Display)));
        } else if value.bytes().all(|b| matches!(b, b' '..=b'~') && b != b'"' && b != b'\\') {
            // What `Debug` writes for it, without its escaping machinery.
            self.write(field, format_args!("\"{value}\""));
        } else {
            self.write(field, format_args!("{value:?}"));
        }
    }

    /// Milliseconds with three decimals (the access log's `latency_ms`) are
    /// written as `Debug` writes them, the shortest decimal that reads back
    /// as the same float, which for them is the decimal they were made
    /// from; without the float formatter. Other values go through `Debug`.
    fn record_f64(&mut self, field: &Field, value: f64) {
        let thousandths = (value * 1000.0).round();
        if value.is_sign_positive() && value < 1e9 && thousandths / 1000.0 == value {
            let m = thousandths as u64;
            let (int, mut frac, mut digits) = (m / 1000, m % 1000, 3);
            if frac == 0 {
                return self.write(field, format_args!("{int}.0"));
            }
            while frac % 10 == 0 {
                frac /= 10;
                digits -= 1;
            }
            return self.write(field, format_args!("{int}.{frac:0digits$}"));
        }
        self.record_debug(field, &value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        match value.source() {
            None => self.write(field, format_args!("{}", Escaped(&value as &dyn fmt::Display))),
            Some(source) => {
                self.write(field, format_args!("{} {}.sources={}", Escaped(&value as &dyn fmt::Display), field.name(), Sources(source)))
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.write(field, format_args!("{}", Escaped(&format_args!("{value:?}") as &dyn fmt::Display)));
        } else {
            self.write(field, format_args!("{value:?}"));
        }
    }
}

impl VisitOutput<fmt::Result> for PlainVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for PlainVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// Displays a value with the characters a terminal acts on (ESC, BEL, BS,
/// FF, DEL and the C1 controls) written as escapes, the set that
/// tracing-subscriber escapes, so that a logged message cannot drive the
/// terminal of whoever reads the log.
struct Escaped<'a>(&'a dyn fmt::Display);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Escaper<'a, 'b>(&'a mut fmt::Formatter<'b>);
        impl fmt::Write for Escaper<'_, '_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                let mut rest = s;
                while let Some(i) = rest.find(|c: char| matches!(c, '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}')) {
                    self.0.write_str(&rest[..i])?;
                    let c = rest[i..].chars().next().unwrap_or('\0');
                    match c {
                        '\u{80}'..='\u{9f}' => write!(self.0, "\\u{{{:x}}}", c as u32)?,
                        _ => write!(self.0, "\\x{:02x}", c as u32)?,
                    }
                    rest = &rest[i + c.len_utf8()..];
                }
                self.0.write_str(rest)
            }
        }
        write!(Escaper(f), "{}", self.0)
    }
}

/// An error's chain of sources, as `[a, b]`.
struct Sources<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for Sources<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        let mut next = Some(self.0);
        while let Some(e) = next {
            list.entry(&format_args!("{}", Escaped(&e as &dyn fmt::Display)));
            next = e.source();
        }
        list.finish()
    }
}

/// Displays a request path for the access log without its `;` segment
/// parameters, which can hold a session id (`;jsessionid=`) as the query
/// string can: `/app;jsessionid=1/x` as `/app/x`. Only formatted when the
/// access log is on.
///
/// A normalised path is printable ASCII. A path that failed normalisation
/// is logged as received, and hyper lets UTF-8 through, C1 controls (the
/// 8-bit CSI, U+009B) among it: every byte outside printable ASCII is
/// percent-encoded, as the path would be on the wire, so that a path
/// cannot drive the terminal of whoever reads the log.
pub struct LogPath<'a>(pub &'a str);

impl fmt::Display for LogPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stripped;
        let path = if self.0.contains(';') {
            stripped = crate::routes::without_segment_params(self.0);
            stripped.as_str()
        } else {
            self.0
        };
        if path.bytes().all(|b| b.is_ascii_graphic()) {
            return f.write_str(path);
        }
        for c in path.chars() {
            if c.is_ascii_graphic() {
                f.write_char(c)?;
            } else {
                for b in c.encode_utf8(&mut [0; 4]).bytes() {
                    write!(f, "%{b:02X}")?;
                }
            }
        }
        Ok(())
    }
}

/// Displays an IP address as `IpAddr` does; an IPv4 address (every client
/// in the access log, mostly) without the formatting machinery behind
/// `u8`'s `Display`, which cost as much as the rest of the line's fields.
pub struct Ip(pub std::net::IpAddr);

impl fmt::Display for Ip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let std::net::IpAddr::V4(v4) = self.0 else { return self.0.fmt(f) };
        if f.width().is_some() || f.precision().is_some() {
            return self.0.fmt(f);
        }
        let mut buf = [0u8; 15];
        let mut n = 0;
        for (i, octet) in v4.octets().into_iter().enumerate() {
            if i > 0 {
                buf[n] = b'.';
                n += 1;
            }
            if octet >= 100 {
                buf[n] = b'0' + octet / 100;
                n += 1;
            }
            if octet >= 10 {
                buf[n] = b'0' + octet / 10 % 10;
                n += 1;
            }
            buf[n] = b'0' + octet % 10;
            n += 1;
        }
        f.write_str(std::str::from_utf8(&buf[..n]).map_err(|_| fmt::Error)?)
    }
}

/// RFC 3339 UTC with microseconds, as tracing-subscriber's `SystemTime`
/// writes it (`2026-11-29T13:14:18.123456Z`). The part up to the second
/// is formatted once a second per thread and reused.
#[derive(Debug, Default, Clone, Copy)]
pub struct CachedTime;

thread_local! {
    /// (unix second, that second as `YYYY-MM-DDTHH:MM:SS`)
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl FormatTime for CachedTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = now.as_secs();
        SECOND.with(|cell| {
            let mut cached = cell.borrow_mut();
            if cached.0 != secs {
                cached.1.clear();
                write_second(&mut cached.1, secs)?;
                cached.0 = secs;
            }
            write!(w, "{}.{:06}Z", cached.1, now.subsec_micros())
        })
    }
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SS` (proleptic Gregorian,
/// the civil-from-days conversion in Howard Hinnant's date algorithms).
fn write_second(out: &mut String, secs: u64) -> fmt::Result {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    write!(out, "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}", rem / 3_600, rem % 3_600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(secs: u64) -> String {
        let mut s = String::new();
        write_second(&mut s, secs).expect("formats");
        s
    }

    #[test]
    fn seconds_are_written_as_rfc3339_dates() {
        assert_eq!(second(0), "1970-01-01T00:00:00");
        assert_eq!(second(951_782_399), "2000-02-28T23:59:59");
        assert_eq!(second(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(second(951_868_800), "2000-03-01T00:00:00");
        assert_eq!(second(4_107_542_399), "2100-02-28T23:59:59");
        assert_eq!(second(4_107_542_400), "2100-03-01T00:00:00");
        assert_eq!(second(1_798_502_400), "2026-12-29T00:00:00");
        assert_eq!(second(1_799_999_999), "2027-01-15T07:59:59");
    }

    #[test]
    fn the_cached_clock_agrees_with_tracing_subscribers() {
        use tracing_subscriber::fmt::time::SystemTime as Reference;
        for _ in 0..3 {
            let (mut ours, mut theirs) = (String::new(), String::new());
            CachedTime.format_time(&mut Writer::new(&mut ours)).expect("formats");
            Reference.format_time(&mut Writer::new(&mut theirs)).expect("formats");
            assert_eq!(ours.len(), theirs.len(), "{ours} vs {theirs}");
            // Equal to the second, unless the second turned between the two.
            if ours[..19] == theirs[..19] {
                return;
            }
        }
        panic!("the two clocks never agreed to the second");
    }

    /// The same events through tracing-subscriber's default text format and
    /// through ours, both without colours: the lines match past the time.
    #[test]
    fn lines_match_tracing_subscribers_own_format() {
        use std::sync::{Arc, Mutex};

        #[derive(Debug)]
        struct Failure;
        impl fmt::Display for Failure {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("outer")
            }
        }
        impl std::error::Error for Failure {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&Inner)
            }
        }
        #[derive(Debug)]
        struct Inner;
        impl fmt::Display for Inner {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("inner \x1b")
            }
        }
        impl std::error::Error for Inner {}

        fn emit() {
            let span = tracing::info_span!("conn", peer = %"127.0.0.1:5000", n = 3);
            let _in = span.enter();
            let ip: std::net::IpAddr = [203, 0, 113, 7].into();
            tracing::info!(target: "authgate::access", client = %ip, method = %"GET", path = %"/a b", status = 200u16,
                sub = Some("al\"ice"), none = Option::<&str>::None, latency_ms = 3.412, neg = -4i64, ok = true, "request");
            tracing::info!(plain = "alice@example.com", tab = "a\tb", uni = "é\u{300}", nl = "a\nb");
            for ms in [
                0.0,
                -0.0,
                0.001,
                0.01,
                0.05,
                0.1 + 0.2,
                1.0 / 3.0,
                3.412,
                12.0,
                12.5,
                1234.567,
                999_999_999.999,
                1e9,
                1e17,
                -2.5,
                f64::NAN,
                f64::INFINITY,
            ] {
                tracing::info!(ms);
            }
            for micros in (0..3_000_000u64).step_by(997) {
                tracing::info!(ms = micros as f64 / 1000.0);
            }
            tracing::warn!(error = &Failure as &(dyn std::error::Error + 'static), "upstream \x1b[31m{}", "down");
            tracing::error!(r#type = "x", message = "plain \x07 str");
            drop(_in);
            // What rustls logs through the log crate.
            let record = tracing_log::log::Record::builder()
                .args(format_args!("handshake failed"))
                .level(tracing_log::log::Level::Warn)
                .target("rustls::server::hs")
                .module_path_static(Some("rustls::server::hs"))
                .file_static(Some("hs.rs"))
                .line(Some(7))
                .build();
            tracing_log::format_trace(&record).expect("dispatched");
            tracing::info!("no fields");
        }
        fn capture(plain: bool) -> String {
            let buf = Arc::new(Mutex::new(Vec::new()));
            let sink = buf.clone();
            let make = move || Sink(sink.clone());
            let builder = tracing_subscriber::fmt().with_writer(make).with_ansi(false);
            if plain {
                tracing::subscriber::with_default(builder.fmt_fields(PlainFields).event_format(PlainFormat).finish(), emit);
            } else {
                tracing::subscriber::with_default(builder.finish(), emit);
            }
            let out = String::from_utf8(buf.lock().expect("not poisoned").clone()).expect("UTF-8 log");
            // Past the timestamp, which differs.
            out.lines().map(|l| l.split_once(' ').expect("a timestamp").1.to_string() + "\n").collect()
        }
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("not poisoned").extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (ours, theirs) = (capture(true), capture(false));
        assert_eq!(ours.lines().count(), 6 + 17 + 3010, "{ours}");
        assert!(ours.contains(" WARN rustls::server::hs: handshake failed\n"), "{ours}");
        assert_eq!(ours, theirs);
    }

    #[test]
    fn ip_addresses_display_as_std_displays_them() {
        for a in [0u8, 1, 9, 10, 42, 99, 100, 127, 199, 200, 255] {
            for b in [0u8, 7, 10, 100, 255] {
                let ip = std::net::IpAddr::from([a, b, 255 - a, b / 2]);
                assert_eq!(Ip(ip).to_string(), ip.to_string());
                assert_eq!(format!("{:>20}", Ip(ip)), format!("{ip:>20}"));
            }
        }
        for ip in ["::1", "2001:db8::7", "::ffff:10.0.0.1"] {
            let ip: std::net::IpAddr = ip.parse().expect("an IP address");
            assert_eq!(Ip(ip).to_string(), ip.to_string());
        }
    }

    #[test]
    fn terminal_controls_in_a_message_are_escaped() {
        let s = format!("{}", Escaped(&"a\x1b[31mred\x07 é \u{9b}ok\n" as &dyn fmt::Display));
        assert_eq!(s, "a\\x1b[31mred\\x07 é \\u{9b}ok\n");
    }
}
