//! Small input checks every service needs. Each returns the normalised value or a
//! [`FieldViolation`] that names the field.

use crate::error::FieldViolation;

/// How many characters of a caller's value an error message repeats.
pub const SHOWN_CHARS: usize = 64;

/// A caller's value as an error message may show it: quoted, control characters
/// escaped, and cut after [`SHOWN_CHARS`] characters with a note of how long it was.
/// Errors never echo unbounded input: a multi-megabyte name would otherwise come back
/// in a status message (and a header) of the same size.
pub fn shown(value: &str) -> String {
    let count = value.chars().count();
    if count <= SHOWN_CHARS {
        return format!("{value:?}");
    }
    let head: String = value.chars().take(SHOWN_CHARS).collect();
    format!("{head:?}... ({count} characters)")
}

/// A required, trimmed text of 1..=max characters with no control characters.
pub fn required_text(field: &str, value: &str, max: usize) -> Result<String, FieldViolation> {
    let value = value.trim();
    if value.is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    optional_text(field, value, max)
}

/// An optional, trimmed text of at most `max` characters with no control characters.
pub fn optional_text(field: &str, value: &str, max: usize) -> Result<String, FieldViolation> {
    let value = value.trim();
    if value.chars().count() > max {
        return Err(FieldViolation::new(
            field,
            format!("is longer than {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldViolation::new(field, "contains control characters"));
    }
    Ok(value.to_owned())
}

/// An email address, lower-cased. Deliberately simple (one `@`, a dotted domain, no
/// spaces): the only real check of an address is a message that arrives.
pub fn email(field: &str, value: &str) -> Result<String, FieldViolation> {
    let value = value.trim().to_lowercase();
    let invalid = || FieldViolation::new(field, "is not a valid email address");
    if value.len() > 254 || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid());
    }
    let (local, domain) = value.split_once('@').ok_or_else(invalid)?;
    let domain_ok = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && !domain.contains('@');
    if local.is_empty() || local.len() > 64 || !domain_ok {
        return Err(invalid());
    }
    Ok(value)
}

/// An email address, or nothing: a blank value is the empty string, anything else
/// must be an address (see [`email`]).
pub fn optional_email(field: &str, value: &str) -> Result<String, FieldViolation> {
    if value.trim().is_empty() {
        Ok(String::new())
    } else {
        email(field, value)
    }
}

/// A phone number, or nothing (see [`phone`]).
pub fn optional_phone(field: &str, value: &str) -> Result<String, FieldViolation> {
    if value.trim().is_empty() {
        Ok(String::new())
    } else {
        phone(field, value)
    }
}

/// A phone number as people write it ("+55 (11) 5555-0100"): digits with optional
/// leading `+` and the separators space, `-`, `.`, `(`, `)`; 7 to 15 digits (E.164).
/// Stored as typed, trimmed.
pub fn phone(field: &str, value: &str) -> Result<String, FieldViolation> {
    let value = value.trim();
    let allowed = value
        .char_indices()
        .all(|(i, c)| c.is_ascii_digit() || " -.()".contains(c) || (c == '+' && i == 0));
    let digits = value.chars().filter(char::is_ascii_digit).count();
    if !allowed || !(7..=15).contains(&digits) {
        return Err(FieldViolation::new(
            field,
            "is not a valid phone number (7 to 15 digits, optional leading +)",
        ));
    }
    Ok(value.to_owned())
}

/// An IANA time zone name exactly as the time zone database spells it
/// ("America/Sao_Paulo", "UTC"). Wrong case, and the database's pseudo-zones that name
/// no place (`Factory`, `localtime`, `posixrules`), are refused: a clinic's zone decides
/// every wall-clock rule, so it must be a real, unambiguous one.
pub fn time_zone(field: &str, value: &str) -> Result<String, FieldViolation> {
    const PSEUDO_ZONES: &[&str] = &["Factory", "localtime", "posixrules", "posix", "right"];
    let value = value.trim();
    if value.is_empty() {
        return Err(FieldViolation::new(
            field,
            "is required (an IANA time zone such as \"America/Sao_Paulo\")",
        ));
    }
    let pseudo = PSEUDO_ZONES
        .iter()
        .any(|p| value == *p || value.starts_with(&format!("{p}/")));
    let known = !pseudo
        && value.len() <= 64
        && jiff::tz::db()
            .available()
            .any(|name| name.as_str() == value)
        && jiff::tz::TimeZone::get(value).is_ok();
    if !known {
        return Err(FieldViolation::new(
            field,
            format!(
                "{} is not an IANA time zone name (spelled as in the database, e.g. \"America/Sao_Paulo\")",
                shown(value)
            ),
        ));
    }
    Ok(value.to_owned())
}

/// A client-chosen idempotency key: up to 100 printable ASCII characters.
pub fn request_id(field: &str, value: &str) -> Result<Option<String>, FieldViolation> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() > 100 || !value.chars().all(|c| c.is_ascii_graphic()) {
        return Err(FieldViolation::new(
            field,
            "must be at most 100 printable ASCII characters",
        ));
    }
    Ok(Some(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            email("e", " Ana@Clinic.COM ").as_deref(),
            Ok("ana@clinic.com")
        );
        for bad in [
            "",
            "ana",
            "ana@",
            "@x.com",
            "ana@x",
            "a b@x.com",
            "ana@x..com",
            "a@b@c.com",
        ] {
            assert!(email("e", bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn phones_accept_common_formats_only() {
        assert!(phone("p", "+55 (11) 5555-0100").is_ok());
        assert!(phone("p", "555.0100.12").is_ok());
        for bad in ["", "123", "+55 11 5555 0100 0000 0", "55+11", "call me"] {
            assert!(phone("p", bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn only_canonical_time_zone_names_are_accepted() {
        for ok in [
            "America/Sao_Paulo",
            "UTC",
            "Europe/Berlin",
            "Australia/Lord_Howe",
        ] {
            assert_eq!(time_zone("tz", ok).as_deref(), Ok(ok));
        }
        for bad in [
            "",
            "america/sao_paulo",
            "AMERICA/NEW_YORK",
            "localtime",
            "Factory",
            "posixrules",
            "Mars/Olympus",
            "../etc/passwd",
        ] {
            assert!(time_zone("tz", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn shown_values_are_bounded() {
        assert_eq!(shown("abc"), "\"abc\"");
        let long = shown(&"é".repeat(5000));
        assert!(long.chars().count() < SHOWN_CHARS + 40, "{long}");
        assert!(long.ends_with("(5000 characters)"), "{long}");
    }

    #[test]
    fn texts_are_trimmed_and_bounded() {
        assert_eq!(
            required_text("n", "  Sorriso  ", 10).as_deref(),
            Ok("Sorriso")
        );
        assert!(required_text("n", "   ", 10).is_err());
        assert!(required_text("n", "abcdefghijk", 10).is_err());
        assert!(optional_text("n", "a\u{0}b", 10).is_err());
    }
}
