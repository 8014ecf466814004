//! The validity period of an X.509 certificate, read from its DER encoding
//! for the readiness check and the certificate expiry metric.
//!
//! [`validity`] walks only as far into the certificate as it must to reach
//! the `validity` field of RFC 5280 section 4.1: `Certificate`,
//! `tbsCertificate`, the optional `version`, `serialNumber`, `signature`,
//! `issuer` and then `validity`. It checks the tag and the length of every
//! element on that path and that the INTEGERs are not empty. It does not
//! check the contents of `signature` and `issuer`, and it reads nothing
//! after `validity`. It does not verify the certificate either, because
//! [`crate::tls`] checks that the key matches it and clients verify the
//! chain.
//!
//! Lengths must be definite and in the minimal form that DER requires
//! (X.690 section 10.1). The reader has no recursion. Each step reads one
//! element from the contents of the element before it.
//!
//! Times follow RFC 5280 section 4.1.2.5. UTCTime is `YYMMDDHHMMSSZ`, where
//! a `YY` of 50 or more means 19YY and below 50 means 20YY. GeneralizedTime
//! is `YYYYMMDDHHMMSSZ`. Both must be in UTC (`Z`), with seconds and without
//! fractions. Second 60 is rejected, because `SystemTime` counts Unix time,
//! which has no leap seconds. rustls-webpki 0.103, which verifies
//! certificates for rustls clients, rejects it as well.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TAG_INTEGER: u8 = 0x02;
const TAG_UTC_TIME: u8 = 0x17;
const TAG_GENERALIZED_TIME: u8 = 0x18;
const TAG_SEQUENCE: u8 = 0x30;
/// The context-specific, constructed tag [0] that wraps `version`.
const TAG_VERSION: u8 = 0xa0;

const SECONDS_PER_DAY: i64 = 86_400;
/// Days from 0000-03-01 to 1970-01-01 in the proleptic Gregorian calendar.
const DAYS_FROM_YEAR_ZERO_MARCH_TO_EPOCH: i64 = 719_468;
/// Days in 400 Gregorian years, after which the calendar repeats.
const DAYS_PER_400_YEARS: i64 = 146_097;

/// The validity period of an X.509 certificate (RFC 5280 section 4.1.2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// Checks whether `now` lies within the period. Both ends are inclusive,
    /// as RFC 5280 section 4.1.2.5 defines them. A period whose `not_after`
    /// is before its `not_before` contains no time at all.
    pub fn contains(&self, now: SystemTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }

    /// Returns `not_after` as seconds since the Unix epoch, negative before
    /// 1970, for the certificate expiry gauge.
    ///
    /// The value is an `i64` because certificate times are whole seconds, so
    /// it is exact. It fits the default `i64` gauge of prometheus-client
    /// 0.24, and every year up to 9999 also converts to `f64` exactly.
    /// Fractions of a second, which only a hand-built `Validity` can hold,
    /// round down.
    pub fn not_after_unix_seconds(&self) -> i64 {
        unix_seconds(self.not_after)
    }
}

/// A structure on the path to the validity period, named as in the ASN.1
/// module of RFC 5280.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Structure {
    Certificate,
    TbsCertificate,
    Version,
    SerialNumber,
    Signature,
    Issuer,
    Validity,
    NotBefore,
    NotAfter,
}

impl std::fmt::Display for Structure {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Self::Certificate => "Certificate",
            Self::TbsCertificate => "tbsCertificate",
            Self::Version => "version",
            Self::SerialNumber => "serialNumber",
            Self::Signature => "signature algorithm of tbsCertificate",
            Self::Issuer => "issuer",
            Self::Validity => "validity",
            Self::NotBefore => "notBefore",
            Self::NotAfter => "notAfter",
        };
        formatter.write_str(name)
    }
}

/// A reason why the validity period could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ValidityError {
    #[error("{0} is truncated: it ends past its enclosing structure or the input")]
    Truncated(Structure),
    #[error("{structure} has tag {found:#04x}, expected {expected}")]
    UnexpectedTag {
        structure: Structure,
        found: u8,
        expected: &'static str,
    },
    #[error("{0} has an indefinite length, which DER does not allow")]
    IndefiniteLength(Structure),
    #[error("{0} has a length in non-minimal form, which DER does not allow")]
    NonMinimalLength(Structure),
    #[error("{0} is followed by unexpected bytes")]
    TrailingData(Structure),
    #[error("{0} is an INTEGER without content octets")]
    EmptyInteger(Structure),
    #[error("invalid {field}: {reason}")]
    InvalidTime { field: Structure, reason: TimeError },
    #[error("{0} is outside the range of times this system can represent")]
    OutOfRange(Structure),
}

/// A reason why a UTCTime or GeneralizedTime is not a valid RFC 5280 time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("{found} bytes long, expected {format}")]
    Length { found: usize, format: &'static str },
    #[error("does not end in Z (UTC)")]
    MissingZ,
    #[error("contains a non-digit where a digit is expected")]
    NotDigit,
    #[error("month {0} is out of range")]
    Month(u8),
    #[error("day {0} does not exist in its month")]
    Day(u8),
    #[error("hour {0} is out of range")]
    Hour(u8),
    #[error("minute {0} is out of range")]
    Minute(u8),
    #[error("second {0} is out of range")]
    Second(u8),
}

/// Reads the validity period of a DER-encoded certificate.
///
/// The input must be exactly one `Certificate`. Only the elements before
/// `validity` are checked, as the module documentation describes.
pub fn validity(der: &[u8]) -> Result<Validity, ValidityError> {
    let (certificate, rest) = read_element(der, TAG_SEQUENCE, Structure::Certificate)?;
    if !rest.is_empty() {
        return Err(ValidityError::TrailingData(Structure::Certificate));
    }
    let (tbs_certificate, _) = read_element(certificate, TAG_SEQUENCE, Structure::TbsCertificate)?;

    let mut fields = tbs_certificate;
    if fields.first() == Some(&TAG_VERSION) {
        let (version, rest) = read_element(fields, TAG_VERSION, Structure::Version)?;
        if !read_integer(version, Structure::Version)?.is_empty() {
            return Err(ValidityError::TrailingData(Structure::Version));
        }
        fields = rest;
    }
    fields = read_integer(fields, Structure::SerialNumber)?;
    (_, fields) = read_element(fields, TAG_SEQUENCE, Structure::Signature)?;
    (_, fields) = read_element(fields, TAG_SEQUENCE, Structure::Issuer)?;
    let (validity, _) = read_element(fields, TAG_SEQUENCE, Structure::Validity)?;

    let (not_before, rest) = read_time(validity, Structure::NotBefore)?;
    let (not_after, rest) = read_time(rest, Structure::NotAfter)?;
    if !rest.is_empty() {
        return Err(ValidityError::TrailingData(Structure::Validity));
    }
    Ok(Validity {
        not_before,
        not_after,
    })
}

/// Reads one element with a single-byte `tag` from the start of `input` and
/// returns its contents and the bytes after it.
///
/// Tags of more than one byte never equal `tag`, so they are reported as
/// unexpected without being parsed.
fn read_element(
    input: &[u8],
    tag: u8,
    structure: Structure,
) -> Result<(&[u8], &[u8]), ValidityError> {
    let (found, contents, rest) = read_any_element(input, structure)?;
    if found != tag {
        return Err(ValidityError::UnexpectedTag {
            structure,
            found,
            expected: tag_name(tag),
        });
    }
    Ok((contents, rest))
}

/// Reads the element at the start of `input`, whatever its tag, and returns
/// its first tag byte, its contents and the bytes after it.
fn read_any_element(
    input: &[u8],
    structure: Structure,
) -> Result<(u8, &[u8], &[u8]), ValidityError> {
    let [tag, first_length_byte, after_header @ ..] = input else {
        return Err(ValidityError::Truncated(structure));
    };
    let (length, after_length) = match *first_length_byte {
        short if short < 0x80 => (usize::from(short), after_header),
        0x80 => return Err(ValidityError::IndefiniteLength(structure)),
        long => read_long_length(after_header, long & 0x7f, structure)?,
    };
    if length > after_length.len() {
        return Err(ValidityError::Truncated(structure));
    }
    let (contents, rest) = after_length.split_at(length);
    Ok((*tag, contents, rest))
}

/// Reads the `count` length bytes of a long-form length (X.690 section
/// 8.1.3.5) and returns the length and the bytes after it.
fn read_long_length(
    input: &[u8],
    count: u8,
    structure: Structure,
) -> Result<(usize, &[u8]), ValidityError> {
    let count = usize::from(count);
    if count > input.len() {
        return Err(ValidityError::Truncated(structure));
    }
    let (length_bytes, rest) = input.split_at(count);
    if length_bytes.first() == Some(&0) {
        return Err(ValidityError::NonMinimalLength(structure));
    }
    // A length written in more bytes than a `usize` has, and without a
    // leading zero byte, exceeds the size of any input in memory.
    if count > size_of::<usize>() {
        return Err(ValidityError::Truncated(structure));
    }
    let length = length_bytes
        .iter()
        .fold(0usize, |length, byte| (length << 8) | usize::from(*byte));
    if length < 0x80 {
        return Err(ValidityError::NonMinimalLength(structure));
    }
    Ok((length, rest))
}

/// Reads an INTEGER and returns the bytes after it. Its value is not needed,
/// but DER requires at least one content octet.
fn read_integer(input: &[u8], structure: Structure) -> Result<&[u8], ValidityError> {
    let (contents, rest) = read_element(input, TAG_INTEGER, structure)?;
    if contents.is_empty() {
        return Err(ValidityError::EmptyInteger(structure));
    }
    Ok(rest)
}

/// Reads a `Time` (UTCTime or GeneralizedTime) and returns it and the bytes
/// after it.
fn read_time(input: &[u8], field: Structure) -> Result<(SystemTime, &[u8]), ValidityError> {
    let (found, contents, rest) = read_any_element(input, field)?;
    let parsed = match found {
        TAG_UTC_TIME => parse_utc_time(contents),
        TAG_GENERALIZED_TIME => parse_generalized_time(contents),
        _ => {
            return Err(ValidityError::UnexpectedTag {
                structure: field,
                found,
                expected: "0x17 (UTCTime) or 0x18 (GeneralizedTime)",
            });
        }
    };
    let seconds = parsed.map_err(|reason| ValidityError::InvalidTime { field, reason })?;
    let time = system_time(seconds).ok_or(ValidityError::OutOfRange(field))?;
    Ok((time, rest))
}

fn tag_name(tag: u8) -> &'static str {
    match tag {
        TAG_INTEGER => "0x02 (INTEGER)",
        TAG_SEQUENCE => "0x30 (SEQUENCE)",
        TAG_VERSION => "0xa0 ([0] version)",
        _ => "another tag",
    }
}

/// Parses a UTCTime of the form `YYMMDDHHMMSSZ` into Unix seconds.
fn parse_utc_time(contents: &[u8]) -> Result<i64, TimeError> {
    let digits = time_digits(contents, 12, "13 (YYMMDDHHMMSSZ)")?;
    let [short_year, month, day, hour, minute, second] = two_digit_values(digits);
    // RFC 5280 section 4.1.2.5.1 maps two-digit years to 1950 through 2049.
    let year = if short_year >= 50 {
        1900 + i64::from(short_year)
    } else {
        2000 + i64::from(short_year)
    };
    unix_seconds_from_fields(year, month, day, hour, minute, second)
}

/// Parses a GeneralizedTime of the form `YYYYMMDDHHMMSSZ` into Unix seconds.
fn parse_generalized_time(contents: &[u8]) -> Result<i64, TimeError> {
    let digits = time_digits(contents, 14, "15 (YYYYMMDDHHMMSSZ)")?;
    let [century, year_of_century, month, day, hour, minute, second] = two_digit_values(digits);
    let year = i64::from(century) * 100 + i64::from(year_of_century);
    unix_seconds_from_fields(year, month, day, hour, minute, second)
}

/// Checks the length, the final `Z` and that everything before it is an
/// ASCII digit, and returns the digits.
fn time_digits<'a>(
    contents: &'a [u8],
    digit_count: usize,
    format: &'static str,
) -> Result<&'a [u8], TimeError> {
    if contents.len() != digit_count + 1 {
        return Err(TimeError::Length {
            found: contents.len(),
            format,
        });
    }
    let (digits, zone) = contents.split_at(digit_count);
    if zone != b"Z" {
        return Err(TimeError::MissingZ);
    }
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(TimeError::NotDigit);
    }
    Ok(digits)
}

/// Reads ASCII digits that `time_digits` has checked as `N` two-digit
/// decimal values.
fn two_digit_values<const N: usize>(digits: &[u8]) -> [u8; N] {
    let mut values = [0; N];
    for (value, pair) in values.iter_mut().zip(digits.chunks_exact(2)) {
        *value = (pair[0] - b'0') * 10 + (pair[1] - b'0');
    }
    values
}

/// Checks a date and time against the calendar and converts it into Unix
/// seconds.
fn unix_seconds_from_fields(
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
) -> Result<i64, TimeError> {
    if !(1..=12).contains(&month) {
        return Err(TimeError::Month(month));
    }
    if day == 0 || day > days_in_month(year, month) {
        return Err(TimeError::Day(day));
    }
    if hour > 23 {
        return Err(TimeError::Hour(hour));
    }
    if minute > 59 {
        return Err(TimeError::Minute(minute));
    }
    if second > 59 {
        return Err(TimeError::Second(second));
    }

    let seconds_of_day = i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second);
    Ok(days_from_civil(year, month, day) * SECONDS_PER_DAY + seconds_of_day)
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Returns the number of days in `month` (1 to 12) of `year`.
fn days_in_month(year: i64, month: u8) -> u8 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Counts the days from 1970-01-01 to a date of the proleptic Gregorian
/// calendar, negative before 1970. `month` and `day` must be valid.
///
/// Years are counted from March, so that the leap day is the last day of a
/// year and every month before it has a fixed length. From March on, the
/// month lengths repeat 31, 30, 31, 30, 31, which gives the days before a
/// month as 153 days per five months. Whole years add 365 days, plus one
/// every 4 years, less one every 100, plus one every 400.
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let march_year = if month <= 2 { year - 1 } else { year };
    let era = march_year.div_euclid(400);
    let year_of_era = march_year.rem_euclid(400);
    // March is 0 and February is 11.
    let month_from_march = (i64::from(month) + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * DAYS_PER_400_YEARS + day_of_era - DAYS_FROM_YEAR_ZERO_MARCH_TO_EPOCH
}

/// Converts Unix seconds into a `SystemTime`, or `None` where the platform
/// cannot represent it (Windows, for one, starts at 1601).
fn system_time(unix_seconds: i64) -> Option<SystemTime> {
    let offset = Duration::from_secs(unix_seconds.unsigned_abs());
    if unix_seconds >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    }
}

/// Converts a `SystemTime` into whole Unix seconds, rounding down and
/// saturating at the ends of `i64`.
fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => {
            let before = before.duration();
            let whole = before
                .as_secs()
                .saturating_add(u64::from(before.subsec_nanos() > 0));
            i64::try_from(whole).map_or(i64::MIN, |seconds| -seconds)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;
    use rcgen::{CertificateParams, KeyPair, date_time_ymd};

    /// Unix seconds of 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z, the
    /// range that a four-digit GeneralizedTime year covers.
    const EARLIEST: i64 = -62_167_219_200;
    const LATEST: i64 = 253_402_300_799;

    fn at(unix_seconds: i64) -> SystemTime {
        system_time(unix_seconds).expect("the test time is representable")
    }

    /// A date and time in UTC, as passed to rcgen.
    #[derive(Clone, Copy)]
    struct Utc {
        year: i32,
        month: u8,
        day: u8,
        seconds_of_day: u64,
    }

    fn utc(year: i32, month: u8, day: u8, hour: u64, minute: u64, second: u64) -> Utc {
        Utc {
            year,
            month,
            day,
            seconds_of_day: hour * 3600 + minute * 60 + second,
        }
    }

    /// A self-signed certificate from rcgen, with its validity period as
    /// Unix seconds computed by the `time` crate.
    struct Generated {
        der: Vec<u8>,
        not_before: i64,
        not_after: i64,
    }

    fn generate(not_before: Utc, not_after: Utc) -> Generated {
        let key = KeyPair::generate().expect("key generation succeeds");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned()]).expect("the name is valid");
        params.not_before = date_time_ymd(not_before.year, not_before.month, not_before.day)
            + Duration::from_secs(not_before.seconds_of_day);
        params.not_after = date_time_ymd(not_after.year, not_after.month, not_after.day)
            + Duration::from_secs(not_after.seconds_of_day);
        let certificate = params.self_signed(&key).expect("self-signing succeeds");
        Generated {
            der: certificate.der().to_vec(),
            not_before: params.not_before.unix_timestamp(),
            not_after: params.not_after.unix_timestamp(),
        }
    }

    /// Checks whether `der` contains a time element with `tag` and `text`,
    /// which shows the encoding rcgen chose.
    fn contains_time(der: &[u8], tag: u8, text: &str) -> bool {
        let mut element = vec![tag, u8::try_from(text.len()).expect("short text")];
        element.extend_from_slice(text.as_bytes());
        der.windows(element.len()).any(|window| window == element)
    }

    /// Encodes an element with a DER length in short or long form.
    fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut element = vec![tag];
        if contents.len() < 0x80 {
            element.push(u8::try_from(contents.len()).expect("short length"));
        } else {
            let length = contents.len().to_be_bytes();
            let significant: Vec<u8> = length.into_iter().skip_while(|byte| *byte == 0).collect();
            element.push(0x80 | u8::try_from(significant.len()).expect("few length bytes"));
            element.extend_from_slice(&significant);
        }
        element.extend_from_slice(contents);
        element
    }

    fn concat(elements: &[&[u8]]) -> Vec<u8> {
        elements.concat()
    }

    fn utc_time(text: &str) -> Vec<u8> {
        tlv(TAG_UTC_TIME, text.as_bytes())
    }

    fn generalized_time(text: &str) -> Vec<u8> {
        tlv(TAG_GENERALIZED_TIME, text.as_bytes())
    }

    /// The encoded `tbsCertificate` fields before `validity`, which tests
    /// replace one at a time.
    struct FieldsBeforeValidity {
        version: Vec<u8>,
        serial_number: Vec<u8>,
        signature: Vec<u8>,
        issuer: Vec<u8>,
    }

    impl FieldsBeforeValidity {
        /// The fields of a version 3 certificate signed with
        /// ecdsa-with-SHA256 by an issuer with one common name.
        fn new() -> Self {
            let common_name = concat(&[&tlv(0x06, &[0x55, 0x04, 0x03]), &tlv(0x0c, b"issuer")]);
            Self {
                version: tlv(TAG_VERSION, &tlv(TAG_INTEGER, &[2])),
                serial_number: tlv(TAG_INTEGER, &[0x01, 0x23]),
                signature: tlv(
                    TAG_SEQUENCE,
                    &tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]),
                ),
                issuer: tlv(TAG_SEQUENCE, &tlv(0x31, &tlv(TAG_SEQUENCE, &common_name))),
            }
        }

        fn encode(&self) -> Vec<u8> {
            concat(&[
                &self.version,
                &self.serial_number,
                &self.signature,
                &self.issuer,
            ])
        }

        /// Builds a certificate with these fields and a validity period from
        /// 2030 to 2031.
        fn certificate(&self) -> Vec<u8> {
            let times = concat(&[&utc_time("300101000000Z"), &utc_time("310101000000Z")]);
            certificate_from_fields(&concat(&[&self.encode(), &tlv(TAG_SEQUENCE, &times)]))
        }
    }

    /// Wraps `tbs_fields` into a `Certificate` with a subject, a signature
    /// algorithm and a signature after them, none of which are read.
    fn certificate_from_fields(tbs_fields: &[u8]) -> Vec<u8> {
        let subject = tlv(TAG_SEQUENCE, &[]);
        let tbs_certificate = tlv(TAG_SEQUENCE, &concat(&[tbs_fields, &subject]));
        let algorithm = tlv(TAG_SEQUENCE, &tlv(0x06, &[0x2a, 0x03]));
        let signature = tlv(0x03, &[0x00, 0xaa, 0xbb]);
        tlv(
            TAG_SEQUENCE,
            &concat(&[&tbs_certificate, &algorithm, &signature]),
        )
    }

    /// Builds a certificate whose `validity` SEQUENCE contains `times`.
    fn certificate_with_times(times: &[u8]) -> Vec<u8> {
        let validity = tlv(TAG_SEQUENCE, times);
        certificate_from_fields(&concat(&[&FieldsBeforeValidity::new().encode(), &validity]))
    }

    fn certificate(not_before: &[u8], not_after: &[u8]) -> Vec<u8> {
        certificate_with_times(&concat(&[not_before, not_after]))
    }

    #[test]
    fn utc_time_certificate() {
        let generated = generate(utc(2030, 6, 15, 13, 45, 7), utc(2031, 1, 2, 3, 4, 5));
        assert!(contains_time(&generated.der, TAG_UTC_TIME, "300615134507Z"));
        assert!(contains_time(&generated.der, TAG_UTC_TIME, "310102030405Z"));

        let validity = validity(&generated.der).expect("the certificate is valid");
        assert_eq!(validity.not_before, at(generated.not_before));
        assert_eq!(validity.not_after, at(generated.not_after));
        assert_eq!(generated.not_before, 1_907_761_507);
        assert_eq!(validity.not_after_unix_seconds(), generated.not_after);
    }

    #[test]
    fn generalized_time_certificate_from_2050() {
        let generated = generate(utc(2049, 12, 31, 23, 59, 59), utc(2050, 1, 1, 0, 0, 0));
        assert!(contains_time(&generated.der, TAG_UTC_TIME, "491231235959Z"));
        assert!(contains_time(
            &generated.der,
            TAG_GENERALIZED_TIME,
            "20500101000000Z"
        ));

        let validity = validity(&generated.der).expect("the certificate is valid");
        assert_eq!(validity.not_before, at(generated.not_before));
        assert_eq!(validity.not_after, at(generated.not_after));
        assert_eq!(validity.not_after_unix_seconds(), generated.not_before + 1);
    }

    #[test]
    fn last_generalized_time_certificate() {
        let generated = generate(utc(2100, 2, 28, 12, 0, 0), utc(9999, 12, 31, 23, 59, 59));
        assert!(contains_time(
            &generated.der,
            TAG_GENERALIZED_TIME,
            "99991231235959Z"
        ));

        let validity = validity(&generated.der).expect("the certificate is valid");
        assert_eq!(validity.not_before, at(generated.not_before));
        assert_eq!(validity.not_after_unix_seconds(), LATEST);
    }

    #[test]
    fn utc_time_certificate_before_1970() {
        let generated = generate(utc(1950, 1, 1, 0, 0, 0), utc(1969, 12, 31, 23, 59, 59));
        assert!(contains_time(&generated.der, TAG_UTC_TIME, "500101000000Z"));
        assert!(contains_time(&generated.der, TAG_UTC_TIME, "691231235959Z"));

        let validity = validity(&generated.der).expect("the certificate is valid");
        assert_eq!(validity.not_before, at(generated.not_before));
        assert_eq!(validity.not_before, at(-631_152_000));
        assert_eq!(validity.not_after, UNIX_EPOCH - Duration::from_secs(1));
        assert_eq!(validity.not_after_unix_seconds(), -1);
    }

    #[test]
    fn generalized_time_certificate_before_1950() {
        let generated = generate(utc(1600, 2, 29, 12, 0, 0), utc(1949, 12, 31, 23, 59, 59));
        assert!(contains_time(
            &generated.der,
            TAG_GENERALIZED_TIME,
            "16000229120000Z"
        ));
        assert!(contains_time(
            &generated.der,
            TAG_GENERALIZED_TIME,
            "19491231235959Z"
        ));

        let validity = validity(&generated.der).expect("the certificate is valid");
        assert_eq!(validity.not_before, at(generated.not_before));
        assert_eq!(validity.not_before, at(-11_670_955_200));
        assert_eq!(validity.not_after, at(generated.not_after));
    }

    #[test]
    fn contains_includes_both_ends() {
        let generated = generate(utc(2030, 1, 1, 0, 0, 0), utc(2030, 12, 31, 23, 59, 59));
        let validity = validity(&generated.der).expect("the certificate is valid");
        let one_second = Duration::from_secs(1);

        assert!(validity.contains(validity.not_before));
        assert!(validity.contains(validity.not_after));
        assert!(validity.contains(at(generated.not_before + 86_400)));
        assert!(!validity.contains(validity.not_before - one_second));
        assert!(!validity.contains(validity.not_after + one_second));
        assert!(!validity.contains(validity.not_after + Duration::from_nanos(1)));
    }

    #[test]
    fn contains_nothing_when_reversed() {
        let reversed = Validity {
            not_before: at(100),
            not_after: at(0),
        };
        assert!(!reversed.contains(at(0)));
        assert!(!reversed.contains(at(50)));
        assert!(!reversed.contains(at(100)));
    }

    #[test]
    fn not_after_unix_seconds_rounds_down() {
        let ending = |not_after| Validity {
            not_before: UNIX_EPOCH,
            not_after,
        };
        let half = Duration::from_millis(500);

        assert_eq!(ending(UNIX_EPOCH).not_after_unix_seconds(), 0);
        assert_eq!(ending(at(1) + half).not_after_unix_seconds(), 1);
        assert_eq!(ending(at(-1) - half).not_after_unix_seconds(), -2);
        assert_eq!(ending(at(-2)).not_after_unix_seconds(), -2);
        assert_eq!(ending(at(EARLIEST)).not_after_unix_seconds(), EARLIEST);
    }

    #[test]
    fn every_prefix_is_truncated() {
        let utc_times = generate(utc(2030, 1, 1, 0, 0, 0), utc(2031, 1, 1, 0, 0, 0));
        let generalized_times = generate(utc(1900, 1, 1, 0, 0, 0), utc(2060, 1, 1, 0, 0, 0));
        for der in [utc_times.der, generalized_times.der] {
            assert!(validity(&der).is_ok());
            for end in 0..der.len() {
                assert_eq!(
                    validity(&der[..end]),
                    Err(ValidityError::Truncated(Structure::Certificate)),
                    "prefix of {end} bytes"
                );
            }
        }
    }

    #[test]
    fn hand_made_certificate_is_read() {
        let der = certificate(&utc_time("700101000000Z"), &utc_time("380119031408Z"));
        let validity = validity(&der).expect("the certificate is valid");
        assert_eq!(validity.not_before, UNIX_EPOCH);
        assert_eq!(validity.not_after, at(2_147_483_648));
    }

    #[test]
    fn version_1_certificate_without_version() {
        let mut fields = FieldsBeforeValidity::new();
        fields.version.clear();
        let validity = validity(&fields.certificate()).expect("the certificate is valid");
        assert_eq!(validity.not_before, at(1_893_456_000));
        assert_eq!(validity.not_after_unix_seconds(), 1_924_992_000);
    }

    #[test]
    fn time_values_convert_exactly() {
        let cases = [
            (utc_time("700101000000Z"), 0),
            (utc_time("691231235959Z"), -1),
            (utc_time("500101000000Z"), -631_152_000),
            (utc_time("491231235959Z"), 2_524_607_999),
            (utc_time("000229000000Z"), 951_782_400),
            (utc_time("240229120000Z"), 1_709_208_000),
            (generalized_time("20000229000000Z"), 951_782_400),
            (generalized_time("19700101000000Z"), 0),
            (generalized_time("00000101000000Z"), EARLIEST),
            (generalized_time("00010101000000Z"), -62_135_596_800),
            (generalized_time("99991231235959Z"), LATEST),
        ];
        for (time, expected) in cases {
            let der = certificate(&time, &time);
            let validity = validity(&der).expect("the time is valid");
            assert_eq!(validity.not_before, at(expected), "{time:02x?}");
            assert_eq!(validity.not_after_unix_seconds(), expected, "{time:02x?}");
        }
    }

    #[test]
    fn invalid_times_are_rejected() {
        let cases = [
            (utc_time("301301000000Z"), TimeError::Month(13)),
            (utc_time("300001000000Z"), TimeError::Month(0)),
            (utc_time("300100000000Z"), TimeError::Day(0)),
            (utc_time("300132000000Z"), TimeError::Day(32)),
            (utc_time("300431000000Z"), TimeError::Day(31)),
            (utc_time("300230000000Z"), TimeError::Day(30)),
            (utc_time("230229000000Z"), TimeError::Day(29)),
            (generalized_time("21000229000000Z"), TimeError::Day(29)),
            (utc_time("300101240000Z"), TimeError::Hour(24)),
            (utc_time("300101006000Z"), TimeError::Minute(60)),
            (utc_time("300101000060Z"), TimeError::Second(60)),
            (generalized_time("20301231235960Z"), TimeError::Second(60)),
            (utc_time("30010100000aZ"), TimeError::NotDigit),
            (utc_time("3001010000 0Z"), TimeError::NotDigit),
            (utc_time("+30101000000Z"), TimeError::NotDigit),
            (generalized_time("2O300101000000Z"), TimeError::NotDigit),
            (utc_time("3001010000000"), TimeError::MissingZ),
            (utc_time("300101000000z"), TimeError::MissingZ),
            (generalized_time("203001010000000"), TimeError::MissingZ),
        ];
        for (time, reason) in cases {
            let valid = utc_time("300101000000Z");
            let invalid = Err(ValidityError::InvalidTime {
                field: Structure::NotBefore,
                reason,
            });
            assert_eq!(
                validity(&certificate(&time, &valid)),
                invalid,
                "{time:02x?}"
            );

            let invalid = Err(ValidityError::InvalidTime {
                field: Structure::NotAfter,
                reason,
            });
            assert_eq!(
                validity(&certificate(&valid, &time)),
                invalid,
                "{time:02x?}"
            );
        }
    }

    #[test]
    fn time_of_wrong_length_is_rejected() {
        let utc_format = "13 (YYMMDDHHMMSSZ)";
        let generalized_format = "15 (YYYYMMDDHHMMSSZ)";
        let cases = [
            (utc_time(""), 0, utc_format),
            (utc_time("3001010000Z"), 11, utc_format),
            (utc_time("300101000000+0100"), 17, utc_format),
            (utc_time("20300101000000Z"), 15, utc_format),
            (generalized_time("300101000000Z"), 13, generalized_format),
            (
                generalized_time("20300101000000.5Z"),
                17,
                generalized_format,
            ),
            (generalized_time("203001010000Z"), 13, generalized_format),
        ];
        for (time, found, format) in cases {
            let der = certificate(&time, &utc_time("300101000000Z"));
            let reason = TimeError::Length { found, format };
            let expected = Err(ValidityError::InvalidTime {
                field: Structure::NotBefore,
                reason,
            });
            assert_eq!(validity(&der), expected, "{time:02x?}");
        }
    }

    #[test]
    fn empty_input_is_truncated() {
        let truncated = Err(ValidityError::Truncated(Structure::Certificate));
        assert_eq!(validity(&[]), truncated);
        assert_eq!(validity(&[TAG_SEQUENCE]), truncated);
        assert_eq!(
            validity(&[TAG_SEQUENCE, 0]),
            Err(ValidityError::Truncated(Structure::TbsCertificate))
        );
    }

    #[test]
    fn wrong_tags_are_rejected() {
        let fields = FieldsBeforeValidity::new();
        let der = fields.certificate();
        // The Certificate and tbsCertificate headers take 2 bytes each,
        // because their contents are shorter than 128 bytes.
        assert!(der[1] < 0x80);
        let tbs_start = 2;
        let version_start = tbs_start + 2;
        let serial_start = version_start + fields.version.len();
        let signature_start = serial_start + fields.serial_number.len();
        let issuer_start = signature_start + fields.signature.len();
        let validity_start = issuer_start + fields.issuer.len();
        let not_before_start = validity_start + 2;
        let not_after_start = not_before_start + 15;
        assert!(der[tbs_start + 1] < 0x80);
        assert_eq!(
            der[not_after_start + 2..not_after_start + 15],
            *b"310101000000Z"
        );

        let time_tags = "0x17 (UTCTime) or 0x18 (GeneralizedTime)";
        let cases = [
            (0, 0x31, Structure::Certificate, "0x30 (SEQUENCE)"),
            (
                tbs_start,
                0x04,
                Structure::TbsCertificate,
                "0x30 (SEQUENCE)",
            ),
            (
                version_start,
                0xa1,
                Structure::SerialNumber,
                "0x02 (INTEGER)",
            ),
            (
                serial_start,
                0x0a,
                Structure::SerialNumber,
                "0x02 (INTEGER)",
            ),
            (
                signature_start,
                0x31,
                Structure::Signature,
                "0x30 (SEQUENCE)",
            ),
            (issuer_start, 0x31, Structure::Issuer, "0x30 (SEQUENCE)"),
            (validity_start, 0x1f, Structure::Validity, "0x30 (SEQUENCE)"),
            (not_before_start, 0x04, Structure::NotBefore, time_tags),
            (not_after_start, 0x13, Structure::NotAfter, time_tags),
        ];
        for (offset, found, structure, expected) in cases {
            let mut changed = der.clone();
            changed[offset] = found;
            let error = ValidityError::UnexpectedTag {
                structure,
                found,
                expected,
            };
            assert_eq!(validity(&changed), Err(error), "tag at offset {offset}");
        }
    }

    #[test]
    fn malformed_version_is_rejected() {
        let cases = [
            (
                tlv(TAG_VERSION, &tlv(0x04, &[2])),
                ValidityError::UnexpectedTag {
                    structure: Structure::Version,
                    found: 0x04,
                    expected: "0x02 (INTEGER)",
                },
            ),
            (
                tlv(TAG_VERSION, &tlv(TAG_INTEGER, &[])),
                ValidityError::EmptyInteger(Structure::Version),
            ),
            (
                tlv(TAG_VERSION, &concat(&[&tlv(TAG_INTEGER, &[2]), &[0]])),
                ValidityError::TrailingData(Structure::Version),
            ),
            (
                tlv(TAG_VERSION, &[]),
                ValidityError::Truncated(Structure::Version),
            ),
        ];
        for (version, error) in cases {
            let mut fields = FieldsBeforeValidity::new();
            fields.version = version;
            assert_eq!(
                validity(&fields.certificate()),
                Err(error),
                "{:02x?}",
                fields.version
            );
        }
    }

    #[test]
    fn empty_serial_number_is_rejected() {
        let mut fields = FieldsBeforeValidity::new();
        fields.serial_number = tlv(TAG_INTEGER, &[]);
        assert_eq!(
            validity(&fields.certificate()),
            Err(ValidityError::EmptyInteger(Structure::SerialNumber))
        );
    }

    #[test]
    fn length_past_enclosing_structure_is_truncated() {
        // The issuer claims 0x7f bytes, more than the tbsCertificate holds,
        // although the whole input is longer than that.
        let mut fields = FieldsBeforeValidity::new();
        fields.issuer[1] = 0x7f;
        let padding = tlv(0x04, &[0; 200]);
        let der = tlv(
            TAG_SEQUENCE,
            &concat(&[&tlv(TAG_SEQUENCE, &fields.encode()), &padding]),
        );
        assert_eq!(
            validity(&der),
            Err(ValidityError::Truncated(Structure::Issuer))
        );

        let only_not_before = certificate_with_times(&utc_time("300101000000Z"));
        assert_eq!(
            validity(&only_not_before),
            Err(ValidityError::Truncated(Structure::NotAfter))
        );

        let not_after = utc_time("310101000000Z");
        let mut long_time = certificate(&utc_time("300101000000Z"), &not_after);
        let not_after_start = long_time
            .windows(not_after.len())
            .position(|window| window == not_after)
            .expect("notAfter is in the certificate");
        long_time[not_after_start + 1] = 14;
        assert_eq!(
            validity(&long_time),
            Err(ValidityError::Truncated(Structure::NotAfter))
        );
    }

    #[test]
    fn indefinite_length_is_rejected() {
        let mut indefinite = certificate(&utc_time("300101000000Z"), &utc_time("310101000000Z"));
        indefinite[1] = 0x80;
        assert_eq!(
            validity(&indefinite),
            Err(ValidityError::IndefiniteLength(Structure::Certificate))
        );

        let times = concat(&[&utc_time("300101000000Z"), &utc_time("310101000000Z")]);
        let indefinite_validity = concat(&[&[TAG_SEQUENCE, 0x80], &times[..], &[0, 0]]);
        let fields = FieldsBeforeValidity::new().encode();
        let der = certificate_from_fields(&concat(&[&fields, &indefinite_validity]));
        assert_eq!(
            validity(&der),
            Err(ValidityError::IndefiniteLength(Structure::Validity))
        );
    }

    #[test]
    fn long_form_lengths_are_checked() {
        let cases: [(&[u8], ValidityError); 7] = [
            (
                &[TAG_SEQUENCE, 0x81, 0x05, 0, 0, 0, 0, 0],
                ValidityError::NonMinimalLength(Structure::Certificate),
            ),
            (
                &[TAG_SEQUENCE, 0x82, 0x00, 0x90],
                ValidityError::NonMinimalLength(Structure::Certificate),
            ),
            (
                &[TAG_SEQUENCE, 0x82, 0x01],
                ValidityError::Truncated(Structure::Certificate),
            ),
            (
                &[TAG_SEQUENCE, 0x84, 0xff, 0xff, 0xff, 0xff, 0],
                ValidityError::Truncated(Structure::Certificate),
            ),
            (
                &[
                    TAG_SEQUENCE,
                    0x88,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                ],
                ValidityError::Truncated(Structure::Certificate),
            ),
            (
                &[TAG_SEQUENCE, 0x89, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ValidityError::Truncated(Structure::Certificate),
            ),
            (
                &[TAG_SEQUENCE, 0xff, 0],
                ValidityError::Truncated(Structure::Certificate),
            ),
        ];
        for (der, error) in cases {
            assert_eq!(validity(der), Err(error), "{der:02x?}");
        }

        let long_validity = tlv(TAG_SEQUENCE, &[0; 300]);
        assert_eq!(&long_validity[..4], &[TAG_SEQUENCE, 0x82, 0x01, 0x2c]);
        let times = concat(&[&utc_time("300101000000Z"), &utc_time("310101000000Z")]);
        let padded = certificate_from_fields(&concat(&[
            &FieldsBeforeValidity::new().encode(),
            &tlv(TAG_SEQUENCE, &times),
            &tlv(0x04, &[0; 300]),
        ]));
        assert!(validity(&padded).is_ok());
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let times = concat(&[&utc_time("300101000000Z"), &utc_time("310101000000Z")]);
        let mut der = certificate_with_times(&times);
        der.push(0);
        assert_eq!(
            validity(&der),
            Err(ValidityError::TrailingData(Structure::Certificate))
        );

        let three_times = concat(&[&times, &utc_time("320101000000Z")]);
        assert_eq!(
            validity(&certificate_with_times(&three_times)),
            Err(ValidityError::TrailingData(Structure::Validity))
        );
    }

    #[test]
    fn errors_name_the_structure() {
        let error = ValidityError::InvalidTime {
            field: Structure::NotAfter,
            reason: TimeError::Day(30),
        };
        assert_eq!(
            error.to_string(),
            "invalid notAfter: day 30 does not exist in its month"
        );
        let error = ValidityError::UnexpectedTag {
            structure: Structure::Issuer,
            found: 0x31,
            expected: "0x30 (SEQUENCE)",
        };
        assert_eq!(
            error.to_string(),
            "issuer has tag 0x31, expected 0x30 (SEQUENCE)"
        );
    }

    #[test]
    fn days_from_civil_counts_every_day() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(0, 1, 1) * SECONDS_PER_DAY, EARLIEST);

        let mut expected = days_from_civil(0, 1, 1);
        for year in 0..=9999 {
            for month in 1..=12 {
                for day in 1..=days_in_month(year, month) {
                    assert_eq!(
                        days_from_civil(year, month, day),
                        expected,
                        "{year}-{month}-{day}"
                    );
                    expected += 1;
                }
            }
        }
        assert_eq!(expected * SECONDS_PER_DAY, LATEST + 1);
    }

    #[test]
    fn leap_years_follow_the_gregorian_rule() {
        assert!(is_leap_year(0));
        assert!(is_leap_year(1600));
        assert!(is_leap_year(2000));
        assert!(is_leap_year(2024));
        assert!(!is_leap_year(1900));
        assert!(!is_leap_year(2023));
        assert!(!is_leap_year(2100));
    }

    /// Formats Unix seconds as the DER time element rcgen would write, with
    /// the calendar computed by the `time` crate.
    fn encode_time(unix_seconds: i64, force_generalized: bool) -> Vec<u8> {
        let epoch = date_time_ymd(1970, 1, 1);
        let offset = Duration::from_secs(unix_seconds.unsigned_abs());
        let time = if unix_seconds >= 0 {
            epoch + offset
        } else {
            epoch - offset
        };
        let (year, month, day) = (time.year(), u8::from(time.month()), time.day());
        let (hour, minute, second) = (time.hour(), time.minute(), time.second());
        if (1950..2050).contains(&year) && !force_generalized {
            let year = year % 100;
            utc_time(&format!(
                "{year:02}{month:02}{day:02}{hour:02}{minute:02}{second:02}Z"
            ))
        } else {
            generalized_time(&format!(
                "{year:04}{month:02}{day:02}{hour:02}{minute:02}{second:02}Z"
            ))
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn encoded_times_round_trip(
            not_before in EARLIEST..=LATEST,
            not_after in -631_152_000i64..2_524_608_000,
            force_generalized in any::<bool>(),
        ) {
            let der = certificate(
                &encode_time(not_before, force_generalized),
                &encode_time(not_after, false),
            );
            let validity = validity(&der);
            prop_assert_eq!(
                validity,
                Ok(Validity { not_before: at(not_before), not_after: at(not_after) })
            );
        }

        #[test]
        fn changed_bytes_never_panic(
            index in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut der = certificate(&utc_time("300101000000Z"), &generalized_time("20600101000000Z"));
            let at_index = index.index(der.len());
            der[at_index] = byte;
            der.truncate(cut.index(der.len()) + 1);
            if let Ok(validity) = validity(&der) {
                let not_before = unix_seconds(validity.not_before);
                let not_after = validity.not_after_unix_seconds();
                prop_assert!((EARLIEST..=LATEST).contains(&not_before));
                prop_assert!((EARLIEST..=LATEST).contains(&not_after));
                prop_assert_eq!(system_time(not_after), Some(validity.not_after));
            }
        }
    }
}
