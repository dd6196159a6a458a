//! `routes::normalise_path`: never panics; what it returns is absolute, has
//! no dot-segments or empty segments, no encoded `/`, `\` or NUL, and is a
//! fixed point (normalising it again changes nothing), so the route matched
//! and the path forwarded cannot disagree.
#![no_main]

use authgate::routes::normalise_path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let Ok(path) = normalise_path(raw) else { return };
    assert!(path.starts_with('/'), "{raw:?} -> {path:?}");
    assert!(!path.contains('\\'), "{raw:?} -> {path:?}");
    let body = path.strip_suffix('/').unwrap_or(&path);
    for seg in body.split('/').skip(1) {
        assert!(!seg.is_empty() && seg != "." && seg != "..", "{raw:?} -> {path:?}");
    }
    let lower = path.to_ascii_lowercase();
    assert!(!lower.contains("%2f") && !lower.contains("%5c") && !lower.contains("%00"), "{raw:?} -> {path:?}");
    assert_eq!(normalise_path(&path).as_deref(), Ok(path.as_str()), "not idempotent for {raw:?}");
});
