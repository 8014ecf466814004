//! The validity period of a DER-encoded certificate.
//!
//! The input is the certificate. Besides never panicking, an accepted input
//! must give whole-second times within the years 0000 to 9999 that
//! GeneralizedTime can write. `not_after_unix_seconds` and `contains` must
//! agree with those times. The certificate has to fill the input exactly, so
//! a strict prefix and the input with a byte appended must be rejected.

#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cartesia_gateway::cert_validity::validity;
use libfuzzer_sys::fuzz_target;

/// Unix seconds of 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
const EARLIEST: i64 = -62_167_219_200;
const LATEST: i64 = 253_402_300_799;

/// Converts a time the parser returned into Unix seconds, checking that it
/// is a whole second.
fn whole_unix_seconds(time: SystemTime) -> i64 {
    let (offset, sign) = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => (after, 1),
        Err(before) => (before.duration(), -1),
    };
    assert_eq!(offset.subsec_nanos(), 0);
    sign * i64::try_from(offset.as_secs()).expect("seconds fit in i64")
}

fuzz_target!(|data: &[u8]| {
    let Ok(period) = validity(data) else {
        return;
    };

    let not_before = whole_unix_seconds(period.not_before);
    let not_after = whole_unix_seconds(period.not_after);
    assert!((EARLIEST..=LATEST).contains(&not_before));
    assert!((EARLIEST..=LATEST).contains(&not_after));
    assert_eq!(period.not_after_unix_seconds(), not_after);

    let ordered = period.not_before <= period.not_after;
    assert_eq!(period.contains(period.not_before), ordered);
    assert_eq!(period.contains(period.not_after), ordered);
    assert!(!period.contains(period.not_after + Duration::from_secs(1)));

    assert!(validity(&data[..data.len() - 1]).is_err());
    let mut longer = data.to_vec();
    longer.push(0);
    assert!(validity(&longer).is_err());
});
