//! `--appointments`: the seed at its original scale, then availability and booking
//! figures on top of it, all through the gateway:
//!
//! - the time `topsmile seed --scale seed` takes (100 clinics, 500 staff, 200 providers,
//!   10,000 patients and histories, 50,000 appointments);
//! - FindAvailableSlots for one provider over a week, and for every provider of a
//!   clinic over a day, one call at a time: p50 and p99;
//! - BookAppointment at its highest throughput (64 in flight), then at 70 % of that
//!   rate, open loop: p50 and p99;
//! - 50 bookings of one slot at once: how long until all are answered (one wins).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use jiff::{SignedDuration, Timestamp};
use topsmile_proto::{
    google::r#type::DayOfWeek,
    topsmile::{
        appointments::v1::{
            Appointment, BookAppointmentRequest, FindAvailableSlotsRequest,
            appointment_service_client::AppointmentServiceClient,
        },
        patients::v1::{
            CreatePatientRequest, Patient, patient_service_client::PatientServiceClient,
        },
        providers::v1::{
            CreateProviderRequest, ListProvidersRequest, Provider, TimeInterval, WorkingDay,
            provider_service_client::ProviderServiceClient,
        },
    },
};

use crate::{ADMIN_EMAIL, ADMIN_PASSWORD, Bearer, connect, percentile};

fn ts(t: Timestamp) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: t.as_second(),
        nanos: 0,
    })
}

pub async fn run(gateway: SocketAddr, bearer: &Bearer, seconds: u64) -> anyhow::Result<()> {
    // The seed, timed.
    let target = topsmile::seed::Target {
        gateway: gateway.to_string(),
        admin_email: ADMIN_EMAIL.into(),
        admin_password: ADMIN_PASSWORD.into(),
        progress: false,
    };
    let report = topsmile::seed::run(&target, &topsmile::seed::Plan::seed()).await?;
    println!(
        "Seed scale (100 clinics, 500 staff, 200 providers, 10,000 patients and histories, 50,000 appointments): {:.1} s, {} calls, {:.0} calls/s, embedded store",
        report.elapsed_ms as f64 / 1000.0,
        report.calls,
        report.calls as f64 * 1000.0 / report.elapsed_ms.max(1) as f64
    );

    let channel = connect(gateway).await?;
    let clinic = report
        .clinics
        .first()
        .context("the seed made no clinic")?
        .clone();
    let providers = ProviderServiceClient::with_interceptor(channel.clone(), bearer.clone())
        .list_providers(ListProvidersRequest {
            parent: clinic.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .providers;
    let provider = providers
        .first()
        .context("the seed made no provider")?
        .name
        .clone();
    let monday = crate::next_monday_utc();
    let week = FindAvailableSlotsRequest {
        parent: clinic.clone(),
        provider,
        start_time: ts(monday),
        end_time: ts(monday + SignedDuration::from_hours(24 * 7)),
        ..Default::default()
    };
    let day = FindAvailableSlotsRequest {
        parent: clinic.clone(),
        start_time: ts(monday),
        end_time: ts(monday + SignedDuration::from_hours(24)),
        ..Default::default()
    };
    let mut client = AppointmentServiceClient::with_interceptor(channel.clone(), bearer.clone());
    for (label, request) in [
        ("one provider, one week", week),
        ("every provider of a clinic, one day", day),
    ] {
        let mut latencies = Vec::new();
        let mut slots = 0;
        let until = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < until {
            let t = Instant::now();
            slots = client
                .find_available_slots(request.clone())
                .await?
                .into_inner()
                .slots
                .len();
            latencies.push(t.elapsed());
        }
        latencies.sort_unstable();
        println!(
            "FindAvailableSlots, {label}, with seed data ({slots} slots): p50 {} µs, p99 {} µs ({} calls)",
            percentile(&latencies, 0.50).as_micros(),
            percentile(&latencies, 0.99).as_micros(),
            latencies.len()
        );
    }

    booking(&channel, bearer, seconds).await?;
    race(&channel, bearer).await
}

/// A clinic of 50 providers who are always there (no buffers, 30-minute visits) and
/// 1,000 patients: booking `k` is provider `k % 50` at half-hour `k / 50`, patient
/// `k % 1000`, so no two bookings collide and every one is a real booking.
struct Supply {
    clinic: String,
    providers: Vec<String>,
    patients: Vec<String>,
    start: Timestamp,
    next: AtomicUsize,
}

impl Supply {
    async fn new(
        channel: &tonic::transport::Channel,
        bearer: &Bearer,
        label: &str,
    ) -> anyhow::Result<Self> {
        let clinic = crate::create_clinic(channel, bearer, &format!("Bench bookings {label}"))
            .await?
            .name;
        let always: Vec<WorkingDay> = [
            DayOfWeek::Monday,
            DayOfWeek::Tuesday,
            DayOfWeek::Wednesday,
            DayOfWeek::Thursday,
            DayOfWeek::Friday,
            DayOfWeek::Saturday,
            DayOfWeek::Sunday,
        ]
        .into_iter()
        .map(|day| WorkingDay {
            day: day as i32,
            intervals: vec![TimeInterval {
                start_minute: 0,
                end_minute: 1440,
            }],
        })
        .collect();
        let mut providers = Vec::new();
        for p in 0..50 {
            providers.push(
                ProviderServiceClient::with_interceptor(channel.clone(), bearer.clone())
                    .create_provider(CreateProviderRequest {
                        parent: clinic.clone(),
                        provider: Some(Provider {
                            display_name: format!("Dr. Bench {p}"),
                            working_hours: always.clone(),
                            ..Default::default()
                        }),
                        request_id: String::new(),
                    })
                    .await?
                    .into_inner()
                    .provider
                    .context("no provider")?
                    .name,
            );
        }
        use futures::StreamExt;
        let made: Vec<Result<String, tonic::Status>> = futures::stream::iter(0..1000)
            .map(|k| {
                let mut client =
                    PatientServiceClient::with_interceptor(channel.clone(), bearer.clone());
                let parent = clinic.clone();
                async move {
                    client
                        .create_patient(CreatePatientRequest {
                            parent,
                            patient: Some(Patient {
                                given_name: "Bench".into(),
                                family_name: format!("Patient {k}"),
                                ..Default::default()
                            }),
                            request_id: String::new(),
                        })
                        .await
                        .map(|r| r.into_inner().patient.map(|p| p.name).unwrap_or_default())
                }
            })
            .buffered(32)
            .collect()
            .await;
        let patients = made.into_iter().collect::<Result<Vec<_>, _>>()?;
        // Half-hours from a week ahead, in UTC (São Paulo is three whole hours off).
        let start = crate::next_monday_utc() + SignedDuration::from_hours(24 * 7);
        Ok(Self {
            clinic,
            providers,
            patients,
            start,
            next: AtomicUsize::new(0),
        })
    }

    fn request(&self) -> BookAppointmentRequest {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        let at = self.start
            + SignedDuration::from_mins(30 * i64::try_from(k / self.providers.len()).unwrap_or(0));
        BookAppointmentRequest {
            parent: self.clinic.clone(),
            appointment: Some(Appointment {
                patient: self.patients[k % self.patients.len()].clone(),
                provider: self.providers[k % self.providers.len()].clone(),
                start_time: ts(at),
                ..Default::default()
            }),
            request_id: String::new(),
        }
    }
}

async fn booking(
    channel: &tonic::transport::Channel,
    bearer: &Bearer,
    seconds: u64,
) -> anyhow::Result<()> {
    let supply = Arc::new(Supply::new(channel, bearer, "throughput").await?);
    // Closed loop at 64 in flight: the most it does.
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..64)
        .map(|_| {
            let (supply, bearer, channel) = (supply.clone(), bearer.clone(), channel.clone());
            tokio::spawn(async move {
                let mut client = AppointmentServiceClient::with_interceptor(channel, bearer);
                let (mut ok, mut failed) = (0usize, 0usize);
                while Instant::now() < until {
                    match client.book_appointment(supply.request()).await {
                        Ok(_) => ok += 1,
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for w in workers {
        let (o, f) = w.await?;
        ok += o;
        failed += f;
    }
    let max_rps = ok as f64 / started.elapsed().as_secs_f64();
    println!(
        "BookAppointment, 64 in flight, embedded store: {max_rps:.0} bookings/s ({failed} failed)"
    );

    // Open loop at 70 % of that: one booking every 1/rate seconds, whatever the answers.
    let rate = (max_rps * 0.7).max(1.0);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut calls = Vec::new();
    while Instant::now() < until {
        tick.tick().await;
        let (supply, bearer, channel) = (supply.clone(), bearer.clone(), channel.clone());
        calls.push(tokio::spawn(async move {
            let t = Instant::now();
            let answer = AppointmentServiceClient::with_interceptor(channel, bearer)
                .book_appointment(supply.request())
                .await;
            (t.elapsed(), answer.is_ok())
        }));
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    for c in calls {
        let (latency, ok) = c.await?;
        if ok {
            latencies.push(latency);
        } else {
            failed += 1;
        }
    }
    latencies.sort_unstable();
    println!(
        "BookAppointment at 70 % of that ({rate:.0}/s, open loop): p50 {} µs, p99 {} µs ({failed} failed)",
        percentile(&latencies, 0.50).as_micros(),
        percentile(&latencies, 0.99).as_micros()
    );
    Ok(())
}

async fn race(channel: &tonic::transport::Channel, bearer: &Bearer) -> anyhow::Result<()> {
    let supply = Supply::new(channel, bearer, "race").await?;
    let request = supply.request();
    let started = Instant::now();
    let answers = futures::future::join_all((0..50).map(|k| {
        let mut request = request.clone();
        if let Some(a) = request.appointment.as_mut() {
            a.patient = supply.patients[k].clone();
        }
        let mut client =
            AppointmentServiceClient::with_interceptor(channel.clone(), bearer.clone());
        async move { client.book_appointment(request).await }
    }))
    .await;
    let elapsed = started.elapsed();
    let won = answers.iter().filter(|a| a.is_ok()).count();
    println!(
        "50 bookings of one slot at once: all answered in {} ms, {won} booked, {} refused",
        elapsed.as_millis(),
        answers.len() - won
    );
    Ok(())
}
