//! Conversions between protobuf `Timestamp`s and `jiff::Timestamp`, the domain's time type.

use jiff::Timestamp;

use crate::error::FieldViolation;

pub fn to_proto(ts: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ts.as_second(),
        nanos: ts.subsec_nanosecond(),
    }
}

/// A timestamp from a request; out of range (year > 9999, bad nanos) is a field violation.
pub fn from_proto(field: &str, ts: &prost_types::Timestamp) -> Result<Timestamp, FieldViolation> {
    Timestamp::new(ts.seconds, ts.nanos)
        .map_err(|_| FieldViolation::new(field, "is not a valid timestamp"))
}

/// Milliseconds since the Unix epoch: how both stores keep times, so that ordering and
/// range queries work the same way in each.
pub fn to_millis(ts: Timestamp) -> i64 {
    ts.as_millisecond()
}

/// The inverse of [`to_millis`]; a stored value out of range falls back to the epoch
/// rather than failing a read.
pub fn from_millis(millis: i64) -> Timestamp {
    Timestamp::from_millisecond(millis).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The current time at the precision both stores keep (milliseconds), so what a create
/// answers is exactly what a later read returns.
///
/// This module is the one place that reads the wall clock (clippy's
/// `disallowed-methods` refuses `Timestamp::now` everywhere else).
#[allow(clippy::disallowed_methods)]
pub fn now() -> Timestamp {
    from_millis(Timestamp::now().as_millisecond())
}

/// Seconds since the Unix epoch, on the real clock: what token lifetimes (`iat`,
/// `exp`) are measured in, since every verifier, on every machine, checks them against
/// its own real clock (an injected test clock would make them disagree).
#[allow(clippy::disallowed_methods)]
pub fn unix_seconds() -> i64 {
    Timestamp::now().as_second()
}

/// Where "now" comes from. Services take an `Arc<dyn Clock>` so tests can move time
/// (an account lock expiring, a token ageing) without sleeping.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The real clock, at storage precision.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        now()
    }
}

/// A clock that tests set and advance.
#[derive(Debug)]
pub struct TestClock(std::sync::Mutex<Timestamp>);

impl TestClock {
    pub fn new(start: Timestamp) -> Self {
        Self(std::sync::Mutex::new(start))
    }

    pub fn advance(&self, by: std::time::Duration) {
        if let Ok(mut t) = self.0.lock() {
            *t = t
                .checked_add(
                    jiff::SignedDuration::try_from(by).unwrap_or(jiff::SignedDuration::MAX),
                )
                .unwrap_or(*t);
        }
    }
}

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        self.0.lock().map(|t| *t).unwrap_or_else(|_| now())
    }
}
