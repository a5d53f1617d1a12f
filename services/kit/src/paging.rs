//! List paging (AIP-158): `page_size` and an opaque `page_token`.
//!
//! A token carries the sort key of the last item returned and a fingerprint of the
//! request that produced it, sealed with a checksum. A token that was altered, or reused
//! with a different parent or filter, is INVALID_ARGUMENT rather than a silently wrong
//! page. Tokens are not secrets: every list query is scoped to the caller's clinic
//! anyway, so a forged cursor can only skip within data the caller may see.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::FieldViolation;

pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 1000;

/// What a store needs to fetch one page: at most `size` items after `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub size: usize,
    pub after: Option<String>,
    fingerprint: String,
}

#[derive(Serialize, Deserialize)]
struct Cursor {
    /// Sort key of the last item of the previous page.
    a: String,
    /// Fingerprint of the request.
    q: String,
}

impl PageRequest {
    /// Validates `page_size` (0 means the default; above the maximum is lowered to it, as
    /// AIP-158 asks) and decodes `page_token`. `query` is every request field that shapes
    /// the result (parent, filters), so a token only continues the list it came from.
    pub fn parse(page_size: i32, page_token: &str, query: &[&str]) -> Result<Self, FieldViolation> {
        let size = match page_size {
            n if n < 0 => return Err(FieldViolation::new("page_size", "must not be negative")),
            0 => DEFAULT_PAGE_SIZE,
            n => usize::try_from(n)
                .unwrap_or(MAX_PAGE_SIZE)
                .min(MAX_PAGE_SIZE),
        };
        let fingerprint = fingerprint(query);
        let after = if page_token.is_empty() {
            None
        } else {
            let cursor = open(page_token)
                .ok_or_else(|| FieldViolation::new("page_token", "is not a valid page token"))?;
            if cursor.q != fingerprint {
                return Err(FieldViolation::new(
                    "page_token",
                    "belongs to a different request: keep every other field as it was",
                ));
            }
            Some(cursor.a)
        };
        Ok(Self {
            size,
            after,
            fingerprint,
        })
    }

    /// The token for the page after the one that ended with `last_key`.
    pub fn next_token(&self, last_key: &str) -> String {
        seal(&Cursor {
            a: last_key.to_owned(),
            q: self.fingerprint.clone(),
        })
    }

    /// Given one page fetched with `size + 1` items (the extra one only tells whether
    /// more exist), trims it and returns the next page token, empty on the last page.
    pub fn finish<T>(&self, mut items: Vec<T>, key: impl Fn(&T) -> String) -> (Vec<T>, String) {
        if items.len() > self.size {
            items.truncate(self.size);
            let token = items
                .last()
                .map(|last| self.next_token(&key(last)))
                .unwrap_or_default();
            (items, token)
        } else {
            (items, String::new())
        }
    }

    /// Like [`finish`](Self::finish), but the page holds at most `max_items` and ends
    /// before its encoded size (`size_of` each item) passes `max_bytes`; it always holds
    /// at least one item, so a listing moves on whatever one item weighs. The store
    /// should have fetched `min(fetch_limit(), max_items + 1)`.
    pub fn finish_within<T>(
        &self,
        mut items: Vec<T>,
        key: impl Fn(&T) -> String,
        size_of: impl Fn(&T) -> usize,
        (max_items, max_bytes): (usize, usize),
    ) -> (Vec<T>, String) {
        let mut total = 0usize;
        let fits = items
            .iter()
            .take(self.size.min(max_items))
            .take_while(|item| {
                total = total.saturating_add(size_of(item));
                total <= max_bytes
            })
            .count()
            .max(1);
        if fits < items.len() {
            items.truncate(fits);
            let token = items
                .last()
                .map(|last| self.next_token(&key(last)))
                .unwrap_or_default();
            (items, token)
        } else {
            (items, String::new())
        }
    }

    /// How many rows a store should fetch: one more than a page.
    pub fn fetch_limit(&self) -> usize {
        self.size + 1
    }
}

fn fingerprint(query: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in query {
        hash.update(part.len().to_le_bytes());
        hash.update(part.as_bytes());
    }
    URL_SAFE_NO_PAD.encode(&hash.finalize()[..12])
}

const SEAL_CONTEXT: &[u8] = b"topsmile page token v1";

fn checksum(payload: &[u8]) -> [u8; 8] {
    let digest = Sha256::new()
        .chain_update(SEAL_CONTEXT)
        .chain_update(payload)
        .finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

fn seal(cursor: &Cursor) -> String {
    let mut payload = serde_json::to_vec(cursor).unwrap_or_default();
    let sum = checksum(&payload);
    payload.extend_from_slice(&sum);
    URL_SAFE_NO_PAD.encode(payload)
}

fn open(token: &str) -> Option<Cursor> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    let split = bytes.len().checked_sub(8)?;
    let (payload, sum) = bytes.split_at(split);
    if checksum(payload) != sum {
        return None;
    }
    serde_json::from_slice(payload).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_also_ends_at_its_byte_budget() {
        let page = PageRequest::parse(10, "", &["q"]).unwrap();
        let items: Vec<usize> = vec![400, 400, 400, 400];
        let (kept, token) =
            page.finish_within(items.clone(), |n| n.to_string(), |n| *n, (10, 1000));
        assert_eq!(kept, vec![400, 400]);
        assert!(!token.is_empty());
        let (one, token) = page.finish_within(vec![5000, 1], |n| n.to_string(), |n| *n, (10, 1000));
        assert_eq!(
            one,
            vec![5000],
            "one oversized item still moves the listing on"
        );
        assert!(!token.is_empty());
        let (all, token) = page.finish_within(vec![1, 2], |n| n.to_string(), |n| *n, (10, 1000));
        assert_eq!((all, token), (vec![1, 2], String::new()));
        let (capped, token) =
            page.finish_within(vec![1, 2, 3], |n| n.to_string(), |n| *n, (2, 1000));
        assert_eq!(capped, vec![1, 2]);
        assert!(!token.is_empty(), "a page cut at max_items has a next page");
    }

    #[test]
    fn a_token_continues_the_same_query() {
        let first = PageRequest::parse(2, "", &["clinics/a"]).unwrap();
        let (items, token) = first.finish(vec!["x", "y", "z"], |s| s.to_string());
        assert_eq!(items, vec!["x", "y"]);
        let next = PageRequest::parse(2, &token, &["clinics/a"]).unwrap();
        assert_eq!(next.after.as_deref(), Some("y"));
    }

    #[test]
    fn the_last_page_has_no_token() {
        let first = PageRequest::parse(5, "", &[]).unwrap();
        assert_eq!(first.finish(vec![1, 2], |n| n.to_string()).1, "");
    }

    #[test]
    fn tampered_or_foreign_tokens_are_rejected() {
        let page = PageRequest::parse(1, "", &["clinics/a"]).unwrap();
        let token = page.next_token("k1");
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[7] ^= 1;
        let tampered = URL_SAFE_NO_PAD.encode(bytes);
        assert!(PageRequest::parse(1, &tampered, &["clinics/a"]).is_err());
        assert!(PageRequest::parse(1, "not-a-token!", &["clinics/a"]).is_err());
        assert!(PageRequest::parse(1, &token, &["clinics/b"]).is_err());
    }

    #[test]
    fn sizes_are_defaulted_and_capped() {
        assert_eq!(
            PageRequest::parse(0, "", &[]).unwrap().size,
            DEFAULT_PAGE_SIZE
        );
        assert_eq!(
            PageRequest::parse(5000, "", &[]).unwrap().size,
            MAX_PAGE_SIZE
        );
        assert!(PageRequest::parse(-1, "", &[]).is_err());
    }
}
