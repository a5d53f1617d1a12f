//! How two active appointments are kept from overlapping, on any store, across any
//! number of replicas, without multi-document transactions.
//!
//! # The mechanism: claims on time granules
//!
//! Real time is cut into five-minute granules (`domain::availability`). An active
//! appointment holds every granule its provider's time (widened by the buffers) and its
//! patient's time touch, as one **claim** document per granule in `appointmentClaims`,
//! whose unique key is `(clinicId, resource, granule)`: `provider/{id}` or
//! `patient/{id}`. Two appointments that overlap would need the same claim, and the
//! store's unique index lets only one of them have it, whichever replica and process
//! asks. That is the whole guarantee; everything else here is making it safe when a
//! step fails or a process dies half-way.
//!
//! Why claims and not the alternatives: a read-then-insert (look for overlaps, then
//! insert) races by construction; a per-provider version document with compare-and-swap
//! serialises every booking of a provider, still needs the patient's calendar checked
//! separately (a second document, so no atomicity), and the appointment written after
//! the version bump can be lost in a crash; a lock held in one process is nothing once
//! there are two replicas. A unique index is the one primitive every store here
//! (SQLite, MongoDB, a sharded MongoDB: the key starts with `clinicId`) enforces
//! atomically on its own.
//!
//! # Steps and crash safety
//!
//! Every reservation has a random **token**. A claim carries the token of the
//! reservation that made it (and `prev`, the hold it was taken over from, below). The
//! appointment record says which tokens are live: `hold_token` while the appointment is
//! booked and active, and its `proposal`'s token while a new time is being claimed. A
//! claim whose tokens are both dead is an orphan; whoever runs into one deletes it
//! (conditionally, as seen) and goes on. A dead token never comes back to life.
//!
//! - **Book**: insert the record unbooked with a proposal (token T); insert the claims
//!   with T; commit by compare-and-swap (booked, hold T, no proposal). If a claim is
//!   live for another appointment: delete ours, remove the record, ALREADY_EXISTS.
//! - **Reschedule**: set a proposal (token T) by compare-and-swap; claims the new time
//!   shares with the current hold H are taken over (token T, prev H: live while either
//!   is); the rest are inserted; commit (time, hold T, no proposal); then delete the
//!   claims still carrying H. On a conflict, claims with T go back to H or away.
//! - **Cancel / no-show**: compare-and-swap the status, then delete every claim of the
//!   appointment.
//!
//! A process that dies after any step leaves either orphans (dead tokens, reclaimed by
//! the next booking that meets them) or a proposal. A proposal older than [`LEASE`] may
//! be abandoned by anyone who meets its claims: they clear it by compare-and-swap
//! first (an unbooked record is removed), so its owner's commit, a compare-and-swap on
//! the same version, fails if it comes late: never both. So no time stays blocked
//! longer than the lease, and no late step can overlap a newer booking.
//!
//! # A patient's quota: seats, claimed like time
//!
//! A portal patient holds at most the clinic's `patient_active_limit` appointments still
//! to come. The cap is claimed the same way as time, so it holds across replicas and
//! racing bookings for the same reason: the quota has one **seat** per allowed
//! appointment, and a self-service booking claims one (`quota/{patient}`, the seat
//! number as granule) beside its time, in the same step with the same token. The
//! booking tries seat 0, then 1, ... (`Duplicate("quota")` when a seat is held by a
//! live appointment); with every seat held, the patient is at the limit. A seat is
//! freed with the appointment's other claims (cancel, no-show, a failed booking), and
//! a seat whose appointment has ended counts as free (it is dead for [`is_live`], and
//! the next booking that meets it deletes it), so visits that happened never hold one.
//! A reschedule takes its seat over like its time. Counting the patient's
//! appointments before booking was rejected: two bookings racing each other would both
//! count the same few and both go through.
//!
//! [`is_live`]: Appointments::is_live

use std::{collections::BTreeSet, sync::Arc};

use jiff::{SignedDuration, Timestamp};
use topsmile_kit::{StoreError, names::ResourceId, paging::PageRequest};
use topsmile_providers::domain::Span;

use super::{
    AppointmentQuery, Claim, Holder, Proposal, QUOTA_PREFIX, Record, Records, claim_resource,
    quota_resource,
};
use crate::domain::{Appointment, Granules, Hold, availability::GRANULE_SECS};

/// How long a time being claimed is protected: past it, the proposal may be abandoned
/// by anyone who needs its time. Far longer than any step takes.
pub const LEASE: SignedDuration = SignedDuration::from_secs(30);

/// How many rounds of reclaiming orphans one reservation tries before it answers
/// ABORTED (retry): each round clears everything it met, so this is only reached
/// under a storm of competing bookings.
const ROUNDS: usize = 8;

/// The appointments store: records and claims, with booking and rescheduling built
/// on them.
pub struct Appointments {
    records: Arc<dyn Records>,
}

impl Appointments {
    pub fn new(records: Arc<dyn Records>) -> Self {
        Self { records }
    }

    /// The plain operations underneath (tests simulate crashes with them).
    pub fn records(&self) -> &Arc<dyn Records> {
        &self.records
    }

    /// The booked appointment `id` of `clinic`.
    pub async fn get(
        &self,
        clinic: &ResourceId,
        id: &ResourceId,
    ) -> Result<Option<Appointment>, StoreError> {
        Ok(self
            .records
            .get(clinic, id)
            .await?
            .filter(|r| r.booked)
            .map(|r| r.appointment))
    }

    pub async fn list(
        &self,
        clinic: &ResourceId,
        query: &AppointmentQuery,
        page: &PageRequest,
    ) -> Result<Vec<Appointment>, StoreError> {
        self.records.list(clinic, query, page).await
    }

    /// The booked appointment first made with `request_key`, with the fingerprint of
    /// what it asked for.
    pub async fn by_request(
        &self,
        clinic: &ResourceId,
        request_key: &str,
    ) -> Result<Option<(Appointment, String)>, StoreError> {
        Ok(self
            .records
            .by_request(clinic, request_key)
            .await?
            .filter(|r| r.booked)
            .map(|r| (r.appointment, r.fingerprint)))
    }

    /// The granules held by the active appointments of one provider or patient that
    /// could reach into `window` (their holds), leaving out `except`.
    pub async fn busy(
        &self,
        clinic: &ResourceId,
        holder: Holder,
        id: &ResourceId,
        window: Span,
        except: Option<&ResourceId>,
    ) -> Result<Vec<Granules>, StoreError> {
        // An appointment lasts at most 8 hours and its buffers at most 4 hours each:
        // one starting up to 12 hours (and a granule) before the window may reach in.
        let reach = SignedDuration::from_hours(12) + SignedDuration::from_secs(GRANULE_SECS);
        let starts = Span::new(
            window.start.checked_sub(reach).unwrap_or(window.start),
            window.end.checked_add(reach).unwrap_or(window.end),
        );
        let found = self.records.holding(clinic, holder, id, starts).await?;
        Ok(found
            .into_iter()
            .filter(|a| except != Some(&a.id))
            .map(|a| match holder {
                Holder::Provider => a.hold.provider,
                Holder::Patient => a.hold.patient,
            })
            .collect())
    }

    /// Books `appointment` (version 1, status SCHEDULED), holding `appointment.hold`,
    /// or answers the first booking made with the same request key. Errors:
    /// `Duplicate("time")` when another active appointment holds part of the time;
    /// `Duplicate("request_id")` when the key was used for another booking;
    /// `Stale` when the same booking is still in progress elsewhere (retry).
    pub async fn book(
        &self,
        appointment: Appointment,
        request_key: String,
        fingerprint: String,
        now: Timestamp,
    ) -> Result<Appointment, StoreError> {
        let token = new_token();
        let clinic = appointment.clinic.clone();
        let id = appointment.id.clone();
        let pending = Record {
            proposal: Some(Proposal {
                token: token.clone(),
                start: appointment.start,
                end: appointment.end,
                hold: appointment.hold,
                since: now,
            }),
            appointment: Appointment {
                version: 0,
                ..appointment
            },
            booked: false,
            hold_token: String::new(),
            request_key,
            fingerprint,
        };
        let mut inserted = false;
        for _ in 0..ROUNDS {
            match self.records.insert(&pending).await? {
                None => {
                    inserted = true;
                    break;
                }
                Some(first) if first.fingerprint != pending.fingerprint => {
                    return Err(StoreError::Duplicate("request_id"));
                }
                Some(first) if first.booked => return Ok(first.appointment),
                Some(first) => {
                    // The same booking, unfinished: in progress elsewhere, or left
                    // behind by a process that died (then it is cleared, and we go on).
                    if !self.abandon_if_expired(&first, now).await? {
                        return Err(StoreError::Stale);
                    }
                }
            }
        }
        if !inserted {
            return Err(StoreError::Stale);
        }
        let wanted = wanted_claims(&pending.appointment, &pending.appointment.hold);
        if let Err(e) = self.claim(&clinic, &id, &token, None, &wanted, now).await {
            self.records
                .release_claims(&clinic, &id, Some(&token), None)
                .await?;
            self.records.remove_unbooked(&clinic, &id, 0).await?;
            return Err(e);
        }
        let committed = Record {
            appointment: Appointment {
                version: 1,
                ..pending.appointment.clone()
            },
            booked: true,
            hold_token: token.clone(),
            proposal: None,
            ..pending
        };
        if !self.records.replace(&committed, 0).await? {
            // Abandoned as expired while we claimed: our claims are dead; tidy them.
            self.records
                .release_claims(&clinic, &id, Some(&token), None)
                .await?;
            return Err(StoreError::Stale);
        }
        Ok(committed.appointment)
    }

    /// Moves `current` (as read, version `v`) to `next` (its new time and hold; the
    /// version is set here). Errors: `Stale` if the appointment changed since it was
    /// read (or another change is in flight); `Duplicate("time")` if another active
    /// appointment holds part of the new time (the old time is kept).
    pub async fn reschedule(
        &self,
        current: &Appointment,
        next: Appointment,
        now: Timestamp,
    ) -> Result<Appointment, StoreError> {
        let clinic = &current.clinic;
        let id = &current.id;
        let record = self.current(current, now).await?;
        let token = new_token();
        let proposing = Record {
            appointment: Appointment {
                version: current.version + 1,
                ..record.appointment.clone()
            },
            proposal: Some(Proposal {
                token: token.clone(),
                start: next.start,
                end: next.end,
                hold: next.hold,
                since: now,
            }),
            ..record.clone()
        };
        if !self.records.replace(&proposing, current.version).await? {
            return Err(StoreError::Stale);
        }
        let held = &record.hold_token;
        let wanted = wanted_claims(&next, &next.hold);
        if let Err(e) = self
            .claim(clinic, id, &token, Some(held), &wanted, now)
            .await
        {
            self.records
                .release_claims(clinic, id, Some(&token), Some(held))
                .await?;
            let back = Record {
                appointment: Appointment {
                    version: current.version + 2,
                    ..record.appointment.clone()
                },
                proposal: None,
                ..record
            };
            // If this fails, the proposal expires with its lease; the old time holds.
            self.records.replace(&back, current.version + 1).await?;
            return Err(e);
        }
        let moved = Record {
            appointment: Appointment {
                version: current.version + 2,
                ..next
            },
            booked: true,
            hold_token: token.clone(),
            proposal: None,
            ..record.clone()
        };
        if !self.records.replace(&moved, current.version + 1).await? {
            self.records
                .release_claims(clinic, id, Some(&token), Some(held))
                .await?;
            return Err(StoreError::Stale);
        }
        // The old time's claims that the new time did not take over are free now.
        self.records
            .release_claims(clinic, id, Some(held), None)
            .await?;
        Ok(moved.appointment)
    }

    /// Stores a lifecycle step: `next` replaces `current` (as read) if it is still
    /// current. A step out of the active states releases the time at once.
    pub async fn transition(
        &self,
        current: &Appointment,
        next: &Appointment,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let record = self.current(current, now).await?;
        let stepped = Record {
            appointment: next.clone(),
            proposal: None,
            ..record
        };
        if !self.records.replace(&stepped, current.version).await? {
            return Err(StoreError::Stale);
        }
        if !next.status.holds_slot() {
            self.records
                .release_claims(&current.clinic, &current.id, None, None)
                .await?;
        }
        Ok(())
    }

    /// The record of `current`, if it is still at the version read and no other change
    /// of it is in flight (an expired one is abandoned first).
    async fn current(&self, current: &Appointment, now: Timestamp) -> Result<Record, StoreError> {
        let record = self
            .records
            .get(&current.clinic, &current.id)
            .await?
            .filter(|r| r.booked)
            .ok_or(StoreError::NotFound("appointment"))?;
        if record.appointment.version != current.version {
            return Err(StoreError::Stale);
        }
        if record.proposal.is_some() {
            // Another change is under way (or was left behind: then it is cleared, and
            // the version moves on either way).
            self.abandon_if_expired(&record, now).await?;
            return Err(StoreError::Stale);
        }
        Ok(record)
    }

    /// Inserts every claim of `wanted` with `token`, taking over the appointment's own
    /// claims of hold `held` and reclaiming orphans on the way.
    async fn claim(
        &self,
        clinic: &ResourceId,
        id: &ResourceId,
        token: &str,
        held: Option<&str>,
        wanted: &[(String, Granules)],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut missing: Vec<Claim> = wanted
            .iter()
            .flat_map(|(resource, granules)| {
                granules.iter().map(move |granule| Claim {
                    clinic: clinic.clone(),
                    resource: resource.clone(),
                    granule,
                    appointment: id.clone(),
                    token: token.to_owned(),
                    prev: String::new(),
                })
            })
            .collect();
        for _ in 0..ROUNDS {
            if held.is_none() && self.records.insert_claims(&missing).await? {
                return Ok(());
            }
            // Someone holds some of it (or, rescheduling, we do): look at each.
            let mut present = BTreeSet::new();
            for (resource, granules) in wanted {
                for found in self
                    .records
                    .claims(clinic, resource, granules.first, granules.end)
                    .await?
                {
                    present.insert((found.resource.clone(), found.granule));
                    if found.token == token {
                        continue;
                    }
                    let ours = found.appointment == *id
                        && held.is_some_and(|h| found.token == h || found.prev == h);
                    if ours {
                        // Our current time's claim: the new time takes it over; it
                        // stays live through `prev` until the move commits.
                        let h = held.unwrap_or_default();
                        if !self.records.retoken_claim(&found, token, h).await? {
                            present.remove(&(found.resource.clone(), found.granule));
                        }
                        continue;
                    }
                    if self.is_live(&found, now).await? {
                        return Err(StoreError::Duplicate(
                            if found.resource.starts_with(QUOTA_PREFIX) {
                                "quota"
                            } else {
                                "time"
                            },
                        ));
                    }
                    self.records.delete_claim(&found).await?;
                    present.remove(&(found.resource.clone(), found.granule));
                }
            }
            missing.retain(|c| !present.contains(&(c.resource.clone(), c.granule)));
            if missing.is_empty() {
                return Ok(());
            }
            if held.is_some() && self.records.insert_claims(&missing).await? {
                return Ok(());
            }
        }
        Err(StoreError::Stale)
    }

    /// Whether `claim` still belongs to a live reservation. A proposal past its lease
    /// is abandoned here (so its owner can no longer commit), making its claims dead.
    /// A quota seat is live only while its appointment is still to come.
    async fn is_live(&self, claim: &Claim, now: Timestamp) -> Result<bool, StoreError> {
        let Some(record) = self.records.get(&claim.clinic, &claim.appointment).await? else {
            return Ok(false);
        };
        let holds =
            |token: &str| !token.is_empty() && (claim.token == token || claim.prev == token);
        if record.booked && record.appointment.status.holds_slot() && holds(&record.hold_token) {
            let over = claim.resource.starts_with(QUOTA_PREFIX) && record.appointment.end <= now;
            return Ok(!over);
        }
        match &record.proposal {
            Some(p) if holds(&p.token) => Ok(!self.abandon_if_expired(&record, now).await?),
            _ => Ok(false),
        }
    }

    /// Clears `record`'s proposal if its lease has run out (removing a record that was
    /// never booked): true if it is gone now, false if it is still within its lease or
    /// someone else changed the record first.
    async fn abandon_if_expired(
        &self,
        record: &Record,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let Some(proposal) = &record.proposal else {
            return Ok(true);
        };
        let expires = proposal.since.checked_add(LEASE).unwrap_or(Timestamp::MAX);
        if now < expires {
            return Ok(false);
        }
        let a = &record.appointment;
        let cleared = if record.booked {
            let next = Record {
                appointment: Appointment {
                    version: a.version + 1,
                    ..a.clone()
                },
                proposal: None,
                ..record.clone()
            };
            self.records.replace(&next, a.version).await?
        } else {
            self.records
                .remove_unbooked(&a.clinic, &a.id, a.version)
                .await?
        };
        if cleared {
            let restore = record.booked.then_some(record.hold_token.as_str());
            self.records
                .release_claims(&a.clinic, &a.id, Some(&proposal.token), restore)
                .await?;
        }
        Ok(cleared)
    }
}

/// The claims an appointment at its time needs: the provider's granules, the
/// patient's, and its seat of the patient's quota if it takes one.
fn wanted_claims(appointment: &Appointment, hold: &Hold) -> Vec<(String, Granules)> {
    let mut wanted = vec![
        (
            claim_resource(Holder::Provider, &appointment.provider),
            hold.provider,
        ),
        (
            claim_resource(Holder::Patient, &appointment.patient),
            hold.patient,
        ),
    ];
    if let Some(seat) = hold.quota {
        wanted.push((
            quota_resource(&appointment.patient),
            Granules {
                first: seat,
                end: seat + 1,
            },
        ));
    }
    wanted
}

fn new_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
