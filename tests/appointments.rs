//! Appointments through the gateway, as a clinic meets them: find a free time, book it,
//! never twice, through the whole lifecycle; patients within the clinic's rules; races
//! through the gateway and a second instance of the service; dependencies down; time
//! exact in the clinic's zone. Journeys run on the embedded store and on MongoDB.
//!
//! The suite's clock is set to Friday 1 March 2030, 12:00 UTC (09:00 in São Paulo, the
//! clinics' zone, UTC-3 all year): "now" for booking rules. Dr. Ana works Monday to
//! Friday, 08:00-12:00 and 13:00-18:00, with 10 minutes kept free after each visit.

mod support;

use support::violations;

use std::sync::Arc;

use futures::future::join_all;
use jiff::{SignedDuration, Timestamp};
use prost_types::Duration;
use support::{Authed, Bearer, ClinicStaff, Setup, TestSuite, mongo_store, patient_token};
use tonic::{Code, Status};
use tonic_types::StatusExt;
use topsmile_kit::time::TestClock;
use topsmile_proto::topsmile::patients::v1 as pb_audit;
use topsmile_proto::{
    google::r#type::DayOfWeek,
    topsmile::{
        appointments::v1::{
            self as pb, AppointmentStatus, appointment_service_client::AppointmentServiceClient,
        },
        patients::v1::{
            self as patients, audit_service_client::AuditServiceClient,
            patient_service_client::PatientServiceClient,
        },
        providers::v1::{self as providers, provider_service_client::ProviderServiceClient},
    },
};

const NOW: &str = "2030-03-01T12:00:00Z";

fn now() -> Timestamp {
    NOW.parse().unwrap()
}

/// Monday 4 March 2030 at `hh:mm` in São Paulo (UTC-3), as UTC.
fn monday(hh: i64, mm: i64) -> Timestamp {
    "2030-03-04T03:00:00Z".parse::<Timestamp>().unwrap() + SignedDuration::from_mins(hh * 60 + mm)
}

fn ts(t: Timestamp) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: t.as_second(),
        nanos: 0,
    })
}

fn of(t: &Option<prost_types::Timestamp>) -> Timestamp {
    let t = t.as_ref().unwrap();
    Timestamp::new(t.seconds, t.nanos).unwrap()
}

fn minutes(m: i64) -> Option<Duration> {
    Some(Duration {
        seconds: m * 60,
        nanos: 0,
    })
}

fn clocked() -> (Setup, Arc<TestClock>) {
    let clock = Arc::new(TestClock::new(now()));
    (
        Setup {
            clock: Some(clock.clone()),
            ..Setup::default()
        },
        clock,
    )
}

async fn start(store: Option<topsmile_kit::store::StoreChoice>) -> (TestSuite, Arc<TestClock>) {
    let (mut setup, clock) = clocked();
    setup.store = store;
    (TestSuite::with(setup).await, clock)
}

async fn appointments_as(suite: &TestSuite, token: &str) -> AppointmentServiceClient<Authed> {
    AppointmentServiceClient::with_interceptor(suite.channel().await, Bearer(Some(token.into())))
}

/// A clinic with its staff, Dr. Ana, and patients, each with a portal token.
struct Clinic {
    staff: ClinicStaff,
    name: String,
    provider: String,
    patients: Vec<(String, String)>,
}

fn weekdays(spans: &[(i32, i32)]) -> Vec<providers::WorkingDay> {
    [
        DayOfWeek::Monday,
        DayOfWeek::Tuesday,
        DayOfWeek::Wednesday,
        DayOfWeek::Thursday,
        DayOfWeek::Friday,
    ]
    .into_iter()
    .map(|day| providers::WorkingDay {
        day: day as i32,
        intervals: spans
            .iter()
            .map(|&(start_minute, end_minute)| providers::TimeInterval {
                start_minute,
                end_minute,
            })
            .collect(),
    })
    .collect()
}

async fn add_provider(
    suite: &TestSuite,
    staff: &ClinicStaff,
    provider: providers::Provider,
) -> String {
    ProviderServiceClient::with_interceptor(
        suite.channel().await,
        Bearer(Some(staff.admin.clone())),
    )
    .create_provider(providers::CreateProviderRequest {
        parent: staff.clinic.name.clone(),
        provider: Some(provider),
        request_id: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .provider
    .unwrap()
    .name
}

async fn clinic(suite: &TestSuite, label: &str, patients: usize) -> Clinic {
    let staff = suite.clinic_with_staff(label).await;
    let provider = add_provider(
        suite,
        &staff,
        providers::Provider {
            display_name: "Dr. Ana".into(),
            working_hours: weekdays(&[(8 * 60, 12 * 60), (13 * 60, 18 * 60)]),
            buffer_after: minutes(10),
            ..Default::default()
        },
    )
    .await;
    let clinic_id = staff.clinic.name.trim_start_matches("clinics/").to_owned();
    let mut list = Vec::new();
    let mut client = PatientServiceClient::with_interceptor(
        suite.channel().await,
        Bearer(Some(staff.admin.clone())),
    );
    for i in 0..patients {
        let name = client
            .create_patient(patients::CreatePatientRequest {
                parent: staff.clinic.name.clone(),
                patient: Some(patients::Patient {
                    given_name: format!("Patient {i}"),
                    family_name: label.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .patient
            .unwrap()
            .name;
        let token = patient_token(suite, &clinic_id, &name).await;
        list.push((name, token));
    }
    Clinic {
        name: staff.clinic.name.clone(),
        staff,
        provider,
        patients: list,
    }
}

fn booking(
    c: &Clinic,
    patient: usize,
    start: Timestamp,
    length: Option<i64>,
) -> pb::BookAppointmentRequest {
    pb::BookAppointmentRequest {
        parent: c.name.clone(),
        appointment: Some(pb::Appointment {
            patient: c.patients[patient].0.clone(),
            provider: c.provider.clone(),
            start_time: ts(start),
            duration: length.and_then(minutes),
            appointment_type: "cleaning".into(),
            ..Default::default()
        }),
        request_id: String::new(),
    }
}

async fn book(
    suite: &TestSuite,
    token: &str,
    request: pb::BookAppointmentRequest,
) -> Result<pb::Appointment, Status> {
    appointments_as(suite, token)
        .await
        .book_appointment(request)
        .await
        .map(|r| r.into_inner().appointment.unwrap_or_default())
}

async fn find(
    suite: &TestSuite,
    token: &str,
    request: pb::FindAvailableSlotsRequest,
) -> Result<Vec<pb::Slot>, Status> {
    appointments_as(suite, token)
        .await
        .find_available_slots(request)
        .await
        .map(|r| r.into_inner().slots)
}

fn monday_morning(c: &Clinic) -> pb::FindAvailableSlotsRequest {
    pb::FindAvailableSlotsRequest {
        parent: c.name.clone(),
        provider: c.provider.clone(),
        start_time: ts(monday(0, 0)),
        end_time: ts(monday(12, 0)),
        ..Default::default()
    }
}

fn starts(slots: &[pb::Slot]) -> Vec<Timestamp> {
    slots.iter().map(|s| of(&s.start_time)).collect()
}

fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

async fn a_visit_from_finding_to_completion(suite: TestSuite) {
    let c = clinic(&suite, "Visit", 2).await;
    let desk = c.staff.staff.clone();

    // Monday morning: 08:00 to 11:30 every 15 minutes (a 30-minute visit ends by 12:00).
    let free = find(&suite, &desk, monday_morning(&c)).await.unwrap();
    let expected: Vec<Timestamp> = (0..15)
        .map(|i| monday(8, 0) + SignedDuration::from_mins(15 * i))
        .collect();
    assert_eq!(starts(&free), expected);
    assert!(free.iter().all(|s| s.provider == c.provider));

    // Book 09:00 with the provider's default length (30 minutes).
    let visit = book(&suite, &desk, booking(&c, 0, monday(9, 0), None))
        .await
        .unwrap();
    assert_eq!(of(&visit.end_time), monday(9, 30));
    assert_eq!(visit.status, AppointmentStatus::Scheduled as i32);
    assert_eq!(visit.etag, "1");

    // The same time for someone else: ALREADY_EXISTS; the time plus the 10-minute
    // buffer is gone from what is offered.
    let err = book(&suite, &desk, booking(&c, 1, monday(9, 0), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let free = find(&suite, &desk, monday_morning(&c)).await.unwrap();
    for gone in [monday(8, 45), monday(9, 0), monday(9, 15), monday(9, 30)] {
        assert!(!starts(&free).contains(&gone), "{gone} is still offered");
    }
    assert!(starts(&free).contains(&monday(9, 45)));
    assert!(
        starts(&free).contains(&monday(8, 15)),
        "08:15-08:45 plus 10 minutes ends at 08:55"
    );

    // Times not offered are refused, each for its reason.
    let err = book(&suite, &desk, booking(&c, 1, monday(9, 10), None))
        .await
        .unwrap_err();
    assert_eq!(
        violations(&err),
        ["start_time"],
        "off the 15-minute step: {err:?}"
    );
    let err = book(&suite, &desk, booking(&c, 1, monday(12, 0), None))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "OUTSIDE_WORKING_HOURS", "{err:?}");
    let err = book(&suite, &desk, booking(&c, 1, monday(11, 45), None))
        .await
        .unwrap_err();
    assert_eq!(
        reason(&err),
        "OUTSIDE_WORKING_HOURS",
        "ends at 12:15: {err:?}"
    );

    // The lifecycle, each step once.
    let mut client = appointments_as(&suite, &c.staff.provider).await;
    let name = visit.name.clone();
    let confirmed = client
        .confirm_appointment(pb::ConfirmAppointmentRequest {
            name: name.clone(),
            etag: visit.etag.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .appointment
        .unwrap();
    assert_eq!(confirmed.status, AppointmentStatus::Confirmed as i32);
    // A stale etag is ABORTED.
    let err = client
        .check_in_appointment(pb::CheckInAppointmentRequest {
            name: name.clone(),
            etag: visit.etag.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    client
        .check_in_appointment(pb::CheckInAppointmentRequest {
            name: name.clone(),
            etag: String::new(),
        })
        .await
        .unwrap();
    client
        .start_appointment(pb::StartAppointmentRequest {
            name: name.clone(),
            etag: String::new(),
        })
        .await
        .unwrap();
    // Cancelling a visit in progress is a wrong state, named in ErrorInfo.
    let err = client
        .cancel_appointment(pb::CancelAppointmentRequest {
            name: name.clone(),
            reason: "too late".into(),
            etag: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let info = err.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "WRONG_STATE");
    assert_eq!(
        info.metadata.get("current_state").map(String::as_str),
        Some("APPOINTMENT_STATUS_IN_PROGRESS")
    );
    let done = client
        .complete_appointment(pb::CompleteAppointmentRequest {
            name: name.clone(),
            etag: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .appointment
        .unwrap();
    assert_eq!(done.status, AppointmentStatus::Completed as i32);
    let err = client
        .confirm_appointment(pb::ConfirmAppointmentRequest {
            name: name.clone(),
            etag: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "WRONG_STATE");

    // Cancel another one: the reason is required and kept; the time is free again.
    let other = book(&suite, &desk, booking(&c, 1, monday(10, 0), None))
        .await
        .unwrap();
    let mut desk_client = appointments_as(&suite, &desk).await;
    let err = desk_client
        .cancel_appointment(pb::CancelAppointmentRequest {
            name: other.name.clone(),
            reason: " ".into(),
            etag: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&err), ["reason"]);
    let cancelled = desk_client
        .cancel_appointment(pb::CancelAppointmentRequest {
            name: other.name.clone(),
            reason: "patient has the flu".into(),
            etag: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .appointment
        .unwrap();
    assert_eq!(cancelled.cancellation_reason, "patient has the flu");
    let free = find(&suite, &desk, monday_morning(&c)).await.unwrap();
    assert!(
        starts(&free).contains(&monday(10, 0)),
        "cancelling frees the time"
    );
    book(&suite, &desk, booking(&c, 0, monday(10, 0), None))
        .await
        .unwrap();

    // Lists: by start, by status, and the cancelled one stays listed.
    let listed = desk_client
        .list_appointments(pb::ListAppointmentsRequest {
            parent: c.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .appointments;
    let times: Vec<Timestamp> = listed.iter().map(|a| of(&a.start_time)).collect();
    assert_eq!(times, [monday(9, 0), monday(10, 0), monday(10, 0)]);
    let only_cancelled = desk_client
        .list_appointments(pb::ListAppointmentsRequest {
            parent: c.name.clone(),
            statuses: vec![AppointmentStatus::Cancelled as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .appointments;
    assert_eq!(only_cancelled.len(), 1);
    assert_eq!(only_cancelled[0].name, other.name);

    // Rescheduling keeps the old time in the history.
    let moved = desk_client
        .reschedule_appointment(pb::RescheduleAppointmentRequest {
            name: listed[2].name.clone(),
            start_time: ts(monday(10, 15)),
            duration: None,
            reason: "traffic".into(),
            etag: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .appointment
        .unwrap();
    assert_eq!(of(&moved.start_time), monday(10, 15));
    assert_eq!(moved.reschedule_history.len(), 1);
    assert_eq!(
        of(&moved.reschedule_history[0].previous_start_time),
        monday(10, 0)
    );
    assert_eq!(
        moved.reschedule_history[0].rescheduled_by,
        c.staff.staff_name
    );
    suite.stop().await;
}

#[tokio::test]
async fn a_visit_from_finding_to_completion_through_the_gateway() {
    a_visit_from_finding_to_completion(start(None).await.0).await;
}

#[tokio::test]
async fn a_visit_from_finding_to_completion_through_the_gateway_on_mongodb() {
    if let Some(store) = mongo_store("a_visit_from_finding_to_completion_on_mongodb") {
        a_visit_from_finding_to_completion(start(Some(store)).await.0).await;
    }
}

/// 50 bookings at once, half through the gateway and half straight at a second
/// instance of the appointments service (another pod, sharing only the store): one
/// wins. Then the same with 50 different but overlapping times.
async fn racing_bookings_make_one_appointment(mut suite: TestSuite) {
    let c = clinic(&suite, "Race", 5).await;
    let second = suite.suite.start_appointments_replica(None).await.unwrap();
    let direct = support::connect(second).await;
    let gateway = suite.channel().await;
    for (round, times) in [
        ("one slot", vec![monday(9, 0)]),
        (
            "overlapping slots",
            vec![
                monday(14, 0),
                monday(14, 15),
                monday(14, 30),
                monday(14, 45),
            ],
        ),
    ] {
        let tasks = (0..50).map(|i| {
            let channel = if i % 2 == 0 {
                gateway.clone()
            } else {
                direct.clone()
            };
            let token = c.staff.staff.clone();
            let request = booking(&c, i % 5, times[i % times.len()], Some(60));
            tokio::spawn(async move {
                AppointmentServiceClient::with_interceptor(channel, Bearer(Some(token)))
                    .book_appointment(request)
                    .await
                    .map(|r| r.into_inner())
            })
        });
        let results: Vec<_> = join_all(tasks)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "{round}: {results:?}");
        for r in &results {
            if let Err(e) = r {
                assert!(
                    matches!(e.code(), Code::AlreadyExists | Code::Aborted),
                    "{round}: a loser is ALREADY_EXISTS or ABORTED: {e:?}"
                );
            }
        }
    }
    let all = appointments_as(&suite, &c.staff.staff)
        .await
        .list_appointments(pb::ListAppointmentsRequest {
            parent: c.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .appointments;
    assert_eq!(all.len(), 2, "{all:?}");
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_bookings_make_one_appointment_across_instances() {
    racing_bookings_make_one_appointment(start(None).await.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_bookings_make_one_appointment_across_instances_on_mongodb() {
    if let Some(store) = mongo_store("racing_bookings_make_one_appointment_on_mongodb") {
        racing_bookings_make_one_appointment(start(Some(store)).await.0).await;
    }
}

/// A patient books, confirms, reschedules and cancels their own appointments only,
/// within the clinic's rules (2 hours' notice, a year ahead, changes until 24 hours
/// before); they see only their own.
#[tokio::test]
async fn patients_book_for_themselves_within_the_clinics_rules() {
    let (suite, clock) = start(None).await;
    let c = clinic(&suite, "Portal", 2).await;
    let (me, my_token) = c.patients[0].clone();
    let (other, _) = c.patients[1].clone();

    // What a patient is offered starts 2 hours from now: Friday 11:00 local, not 09:15.
    let friday = pb::FindAvailableSlotsRequest {
        parent: c.name.clone(),
        provider: c.provider.clone(),
        start_time: ts(now()),
        end_time: ts(now() + SignedDuration::from_hours(4)),
        ..Default::default()
    };
    let offered = find(&suite, &my_token, friday.clone()).await.unwrap();
    assert_eq!(
        starts(&offered).first(),
        Some(&(now() + SignedDuration::from_hours(2)))
    );
    let staff_offered = find(&suite, &c.staff.staff, friday).await.unwrap();
    assert_eq!(
        starts(&staff_offered).first(),
        Some(&now()),
        "staff book from now on"
    );

    // Too soon, too far, and for someone else: refused.
    let err = book(
        &suite,
        &my_token,
        booking(&c, 0, now() + SignedDuration::from_mins(60), None),
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&err), "TOO_SOON", "{err:?}");
    let far = monday(9, 0) + SignedDuration::from_hours(24 * 7 * 60);
    let err = book(&suite, &my_token, booking(&c, 0, far, None))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "TOO_FAR_AHEAD", "{err:?}");
    let err = book(&suite, &my_token, booking(&c, 1, monday(9, 0), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Their own, on Monday: booked, confirmed, moved.
    let mine = book(&suite, &my_token, booking(&c, 0, monday(9, 0), None))
        .await
        .unwrap();
    assert_eq!(mine.patient, me);
    let theirs = book(&suite, &c.staff.staff, booking(&c, 1, monday(11, 0), None))
        .await
        .unwrap();
    let mut client = appointments_as(&suite, &my_token).await;
    client
        .confirm_appointment(pb::ConfirmAppointmentRequest {
            name: mine.name.clone(),
            etag: String::new(),
        })
        .await
        .unwrap();
    let moved = client
        .reschedule_appointment(pb::RescheduleAppointmentRequest {
            name: mine.name.clone(),
            start_time: ts(monday(9, 30)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .appointment
        .unwrap();
    assert_eq!(
        moved.status,
        AppointmentStatus::Scheduled as i32,
        "a moved visit needs confirming again"
    );

    // Someone else's appointment does not exist for them, whatever they try.
    let err = client
        .get_appointment(pb::GetAppointmentRequest {
            name: theirs.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .cancel_appointment(pb::CancelAppointmentRequest {
            name: theirs.name.clone(),
            reason: "not mine".into(),
            etag: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let listed = client
        .list_appointments(pb::ListAppointmentsRequest {
            parent: c.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .appointments;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, mine.name);
    let err = client
        .list_appointments(pb::ListAppointmentsRequest {
            parent: c.name.clone(),
            patient: other.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // Staff-only steps stay staff-only.
    let err = client
        .check_in_appointment(pb::CheckInAppointmentRequest {
            name: mine.name.clone(),
            etag: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Sunday 10:00 (UTC): less than 24 hours before Monday 09:30 local... not yet; at
    // Sunday 13:00 UTC it is: the patient must call the clinic.
    clock.advance(std::time::Duration::from_secs(2 * 86_400 - 3600));
    client
        .reschedule_appointment(pb::RescheduleAppointmentRequest {
            name: mine.name.clone(),
            start_time: ts(monday(9, 45)),
            ..Default::default()
        })
        .await
        .unwrap();
    clock.advance(std::time::Duration::from_secs(3 * 3600));
    let err = client
        .cancel_appointment(pb::CancelAppointmentRequest {
            name: mine.name.clone(),
            reason: "cannot come".into(),
            etag: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "PAST_CHANGE_CUTOFF", "{err:?}");
    // Staff still can.
    appointments_as(&suite, &c.staff.staff)
        .await
        .cancel_appointment(pb::CancelAppointmentRequest {
            name: mine.name.clone(),
            reason: "patient called".into(),
            etag: String::new(),
        })
        .await
        .unwrap();
    suite.stop().await;
}

/// No-show only once the start has passed; windows of more than 31 days are refused.
#[tokio::test]
async fn no_shows_come_after_the_start_and_searches_are_bounded() {
    let (suite, clock) = start(None).await;
    let c = clinic(&suite, "Bounds", 1).await;
    let visit = book(&suite, &c.staff.staff, booking(&c, 0, monday(9, 0), None))
        .await
        .unwrap();
    let mut client = appointments_as(&suite, &c.staff.staff).await;
    let no_show = pb::MarkAppointmentNoShowRequest {
        name: visit.name.clone(),
        etag: String::new(),
    };
    let err = client
        .mark_appointment_no_show(no_show.clone())
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "NOT_STARTED", "{err:?}");
    clock.advance(std::time::Duration::from_secs(3 * 86_400));
    let marked = client
        .mark_appointment_no_show(no_show)
        .await
        .unwrap()
        .into_inner()
        .appointment
        .unwrap();
    assert_eq!(marked.status, AppointmentStatus::NoShow as i32);

    let err = find(
        &suite,
        &c.staff.staff,
        pb::FindAvailableSlotsRequest {
            parent: c.name.clone(),
            start_time: ts(monday(0, 0)),
            end_time: ts(monday(0, 0) + SignedDuration::from_hours(24 * 31 + 1)),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(violations(&err), ["end_time"]);

    // A provider who is always there, on a 5-minute step: 31 days hold 8,928 slots; the
    // answer is the earliest ones that fit in one message (this suite allows 64 KiB).
    support::set_slot_step(&suite, &c.staff, 5).await;
    let always = add_provider(
        &suite,
        &c.staff,
        providers::Provider {
            display_name: "Dr. Always".into(),
            working_hours: (1..=7)
                .map(|day| providers::WorkingDay {
                    day,
                    intervals: vec![providers::TimeInterval {
                        start_minute: 0,
                        end_minute: 1440,
                    }],
                })
                .collect(),
            ..Default::default()
        },
    )
    .await;
    let from = monday(0, 0) + SignedDuration::from_hours(24 * 7);
    let slots = find(
        &suite,
        &c.staff.staff,
        pb::FindAvailableSlotsRequest {
            parent: c.name.clone(),
            provider: always,
            start_time: ts(from),
            end_time: ts(from + SignedDuration::from_hours(24 * 31)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(slots.len() > 100 && slots.len() < 5000, "{}", slots.len());
    let expected: Vec<Timestamp> = (0..slots.len())
        .map(|i| from + SignedDuration::from_mins(5 * i64::try_from(i).unwrap()))
        .collect();
    assert_eq!(starts(&slots), expected, "the earliest, in order");
    suite.stop().await;
}

/// With room for it (a 4 MiB message limit), the same search answers exactly the
/// earliest 5,000 slots.
#[tokio::test]
async fn a_search_answers_at_most_five_thousand_slots() {
    let clock = Arc::new(TestClock::new(now()));
    let suite = TestSuite::with(Setup {
        clock: Some(clock),
        limits: topsmile_kit::config::ServerLimits::default(),
        ..Setup::default()
    })
    .await;
    let staff = suite.clinic_with_staff("Many").await;
    support::set_slot_step(&suite, &staff, 5).await;
    let always = add_provider(
        &suite,
        &staff,
        providers::Provider {
            display_name: "Dr. Always".into(),
            working_hours: (1..=7)
                .map(|day| providers::WorkingDay {
                    day,
                    intervals: vec![providers::TimeInterval {
                        start_minute: 0,
                        end_minute: 1440,
                    }],
                })
                .collect(),
            ..Default::default()
        },
    )
    .await;
    let from = monday(0, 0);
    let slots = find(
        &suite,
        &staff.staff,
        pb::FindAvailableSlotsRequest {
            parent: staff.clinic.name.clone(),
            provider: always,
            start_time: ts(from),
            end_time: ts(from + SignedDuration::from_hours(24 * 31)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(slots.len(), 5000);
    assert_eq!(starts(&slots)[0], from);
    assert_eq!(
        starts(&slots)[4999],
        from + SignedDuration::from_mins(5 * 4999)
    );
    suite.stop().await;
}

/// With the patients service out of reach, a booking is UNAVAILABLE and nothing is
/// written.
#[tokio::test]
async fn a_booking_with_a_dependency_down_is_unavailable_and_writes_nothing() {
    let (mut suite, _clock) = start(None).await;
    let c = clinic(&suite, "Down", 1).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = dead.local_addr().unwrap().to_string();
    drop(dead);
    let settings = topsmile_appointments::AppointmentSettings {
        service_secret: None,
        patients_upstreams: nowhere,
        providers_upstreams: suite.suite.services["providers"].to_string(),
    };
    // The secret is the suite's: take it from the running replica's settings.
    let err = suite
        .suite
        .start_appointments_replica(Some(settings.clone()))
        .await;
    assert!(
        err.is_err(),
        "a replica without the service secret does not start"
    );
    let replica = suite
        .suite
        .start_appointments_replica(Some(topsmile_appointments::AppointmentSettings {
            service_secret: suite.suite.service_secret(),
            ..settings
        }))
        .await
        .unwrap();
    let mut client = AppointmentServiceClient::with_interceptor(
        support::connect(replica).await,
        Bearer(Some(c.staff.staff.clone())),
    );
    let err = client
        .book_appointment(booking(&c, 0, monday(9, 0), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let listed = appointments_as(&suite, &c.staff.staff)
        .await
        .list_appointments(pb::ListAppointmentsRequest {
            parent: c.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .appointments;
    assert!(listed.is_empty(), "{listed:?}");
    // Through the gateway (every dependency up) the same booking goes through.
    book(&suite, &c.staff.staff, booking(&c, 0, monday(9, 0), None))
        .await
        .unwrap();
    suite.stop().await;
}

/// A stand-in for the patients service that records the `grpc-timeout` of every call
/// it gets and answers UNAVAILABLE.
#[derive(Clone, Default)]
struct DeadlineRecorder(std::sync::Arc<std::sync::Mutex<Vec<Option<std::time::Duration>>>>);

impl tonic::server::NamedService for DeadlineRecorder {
    const NAME: &'static str = "topsmile.patients.v1.PatientInternalService";
}

impl tower::Service<http::Request<tonic::body::Body>> for DeadlineRecorder {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if let Ok(mut seen) = self.0.lock() {
            seen.push(topsmile_kit::peers::grpc_timeout(request.headers()));
        }
        std::future::ready(Ok(Status::unavailable("recorder").into_http()))
    }
}

/// A service calling another hands on what is left of its own deadline, never more.
#[tokio::test]
async fn a_call_to_another_service_gets_what_is_left_of_the_callers_deadline() {
    let (mut suite, _clock) = start(None).await;
    let c = clinic(&suite, "Deadlines", 1).await;
    let recorder = DeadlineRecorder::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let patients = listener.local_addr().unwrap();
    let serving = recorder.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_routes(tonic::service::Routes::new(serving))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    let replica = suite
        .suite
        .start_appointments_replica(Some(topsmile_appointments::AppointmentSettings {
            service_secret: suite.suite.service_secret(),
            patients_upstreams: patients.to_string(),
            providers_upstreams: suite.suite.services["providers"].to_string(),
        }))
        .await
        .unwrap();
    let mut client = AppointmentServiceClient::with_interceptor(
        support::connect(replica).await,
        Bearer(Some(c.staff.staff.clone())),
    );
    let mut request = tonic::Request::new(booking(&c, 0, monday(9, 0), None));
    request.set_timeout(std::time::Duration::from_millis(4000));
    let err = client.book_appointment(request).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let seen = recorder.0.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the patients stand-in was called");
    for timeout in seen {
        let timeout = timeout.expect("the call to patients carries a deadline");
        assert!(
            timeout <= std::time::Duration::from_millis(4000),
            "patients was given {timeout:?}, more than the 4 s the caller had"
        );
    }
    suite.stop().await;
}

/// Every method, aimed by each role of clinic A at clinic B: PERMISSION_DENIED,
/// through the gateway and straight at the service; B's appointment unchanged.
#[tokio::test]
async fn other_clinics_cannot_reach_a_clinics_appointments() {
    let (suite, _clock) = start(None).await;
    let a = clinic(&suite, "Prober", 1).await;
    let b = clinic(&suite, "Target", 1).await;
    let target = book(&suite, &b.staff.staff, booking(&b, 0, monday(9, 0), None))
        .await
        .unwrap();
    let direct = support::connect(suite.suite.services["appointments"]).await;
    for channel in [suite.channel().await, direct] {
        for (who, token) in [
            ("admin", &a.staff.admin),
            ("provider", &a.staff.provider),
            ("staff", &a.staff.staff),
            ("patient", &a.patients[0].1),
        ] {
            let mut client = AppointmentServiceClient::with_interceptor(
                channel.clone(),
                Bearer(Some(token.clone())),
            );
            let name = target.name.clone();
            let code = |r: Result<(), Status>| r.map_or_else(|e| e.code(), |()| Code::Ok);
            let mut aimed = booking(&b, 0, monday(10, 0), None);
            aimed.parent = b.name.clone();
            let codes = [
                code(client.book_appointment(aimed).await.map(drop)),
                code(
                    client
                        .get_appointment(pb::GetAppointmentRequest { name: name.clone() })
                        .await
                        .map(drop),
                ),
                code(
                    client
                        .list_appointments(pb::ListAppointmentsRequest {
                            parent: b.name.clone(),
                            ..Default::default()
                        })
                        .await
                        .map(drop),
                ),
                code(
                    client
                        .reschedule_appointment(pb::RescheduleAppointmentRequest {
                            name: name.clone(),
                            start_time: ts(monday(11, 0)),
                            ..Default::default()
                        })
                        .await
                        .map(drop),
                ),
                code(
                    client
                        .confirm_appointment(pb::ConfirmAppointmentRequest {
                            name: name.clone(),
                            etag: String::new(),
                        })
                        .await
                        .map(drop),
                ),
                code(
                    client
                        .cancel_appointment(pb::CancelAppointmentRequest {
                            name: name.clone(),
                            reason: "probe".into(),
                            etag: String::new(),
                        })
                        .await
                        .map(drop),
                ),
                code(
                    client
                        .find_available_slots(pb::FindAvailableSlotsRequest {
                            parent: b.name.clone(),
                            start_time: ts(monday(0, 0)),
                            end_time: ts(monday(23, 0)),
                            ..Default::default()
                        })
                        .await
                        .map(drop),
                ),
            ];
            assert_eq!(codes, [Code::PermissionDenied; 7], "{who}");
            // The staff-only steps: refused by role (patient) or by clinic.
            for code in [
                code(
                    client
                        .start_appointment(pb::StartAppointmentRequest {
                            name: name.clone(),
                            etag: String::new(),
                        })
                        .await
                        .map(drop),
                ),
                code(
                    client
                        .complete_appointment(pb::CompleteAppointmentRequest {
                            name: name.clone(),
                            etag: String::new(),
                        })
                        .await
                        .map(drop),
                ),
                code(
                    client
                        .check_in_appointment(pb::CheckInAppointmentRequest {
                            name: name.clone(),
                            etag: String::new(),
                        })
                        .await
                        .map(drop),
                ),
                code(
                    client
                        .mark_appointment_no_show(pb::MarkAppointmentNoShowRequest {
                            name: name.clone(),
                            etag: String::new(),
                        })
                        .await
                        .map(drop),
                ),
            ] {
                assert_eq!(code, Code::PermissionDenied, "{who}");
            }
        }
    }
    let still = appointments_as(&suite, &b.staff.staff)
        .await
        .get_appointment(pb::GetAppointmentRequest {
            name: target.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .appointment
        .unwrap();
    assert_eq!(still, target);
    suite.stop().await;
}

/// Appointment reads and writes are in the clinic's audit trail, beside patient
/// events: who, what, outcome; refused attempts too.
#[tokio::test]
async fn appointment_calls_are_in_the_clinics_audit_trail() {
    let (suite, _clock) = start(None).await;
    let c = clinic(&suite, "Audited", 2).await;
    let visit = book(&suite, &c.staff.staff, booking(&c, 0, monday(9, 0), None))
        .await
        .unwrap();
    let _ = book(&suite, &c.staff.staff, booking(&c, 1, monday(9, 0), None)).await;
    let _ = appointments_as(&suite, &c.patients[1].1)
        .await
        .get_appointment(pb::GetAppointmentRequest {
            name: visit.name.clone(),
        })
        .await;
    let events = AuditServiceClient::with_interceptor(
        suite.channel().await,
        Bearer(Some(c.staff.admin.clone())),
    )
    .list_audit_events(patients::ListAuditEventsRequest {
        parent: c.name.clone(),
        resource: visit.name.clone(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .audit_events;
    let seen: Vec<(String, String, String)> = events
        .iter()
        .map(|e| (e.action.clone(), e.outcome.clone(), e.actor.clone()))
        .collect();
    let book_action = "AppointmentService/BookAppointment".to_owned();
    assert!(
        seen.contains(&(
            book_action.clone(),
            "PENDING".into(),
            c.staff.staff_name.clone()
        )),
        "{seen:?}"
    );
    assert!(
        seen.contains(&(book_action, "OK".into(), c.staff.staff_name.clone())),
        "{seen:?}"
    );
    assert!(
        seen.contains(&(
            "AppointmentService/GetAppointment".into(),
            "NOT_FOUND".into(),
            c.patients[1].0.clone()
        )),
        "another patient's probe is recorded: {seen:?}"
    );
    // A search for free times is recorded when it is a patient's; a provider's free
    // times alone are not health information.
    find(&suite, &c.staff.staff, monday_morning(&c))
        .await
        .unwrap();
    find(&suite, &c.patients[0].1, monday_morning(&c))
        .await
        .unwrap();
    let searches: Vec<pb_audit::AuditEvent> = AuditServiceClient::with_interceptor(
        suite.channel().await,
        Bearer(Some(c.staff.admin.clone())),
    )
    .list_audit_events(patients::ListAuditEventsRequest {
        parent: c.name.clone(),
        page_size: 1000,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .audit_events
    .into_iter()
    .filter(|e| e.action == "AppointmentService/FindAvailableSlots")
    .collect();
    assert_eq!(searches.len(), 1, "{searches:?}");
    assert_eq!(searches[0].actor, c.patients[0].0);
    assert_eq!(searches[0].resource, c.patients[0].0);

    // A step the role may not take at all is refused before the handler, and recorded.
    let err = appointments_as(&suite, &c.patients[0].1)
        .await
        .check_in_appointment(pb::CheckInAppointmentRequest {
            name: visit.name.clone(),
            etag: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let by_patient = AuditServiceClient::with_interceptor(
        suite.channel().await,
        Bearer(Some(c.staff.admin.clone())),
    )
    .list_audit_events(patients::ListAuditEventsRequest {
        parent: c.name.clone(),
        actor: c.patients[0].0.clone(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .audit_events;
    assert!(
        by_patient
            .iter()
            .any(|e| e.action == "AppointmentService/CheckInAppointment"
                && e.outcome == "PERMISSION_DENIED"),
        "{by_patient:?}"
    );
    suite.stop().await;
}

/// Across a daylight-saving change the clinic's wall clock decides: on Sunday 8 March
/// 2026 New York skips 02:00-03:00; a provider working 01:00-04:00 that day works two
/// real hours. Nothing is offered in the gap; starts keep to the wall clock's step on
/// both sides of it; a visit from 01:45 EST lasts its 30 real minutes, to 03:15 EDT.
#[tokio::test]
async fn offered_times_skip_the_hour_that_does_not_exist() {
    let clock = Arc::new(TestClock::new("2026-03-01T12:00:00Z".parse().unwrap()));
    let suite = TestSuite::with(Setup {
        clock: Some(clock),
        ..Setup::default()
    })
    .await;
    let staff = suite.clinic_with_staff("Spring").await;
    support::set_time_zone(&suite, &staff, "America/New_York").await;
    let provider = add_provider(
        &suite,
        &staff,
        providers::Provider {
            display_name: "Dr. Night".into(),
            working_hours: vec![providers::WorkingDay {
                day: DayOfWeek::Sunday as i32,
                intervals: vec![providers::TimeInterval {
                    start_minute: 60,
                    end_minute: 240,
                }],
            }],
            ..Default::default()
        },
    )
    .await;
    let slots = find(
        &suite,
        &staff.staff,
        pb::FindAvailableSlotsRequest {
            parent: staff.clinic.name.clone(),
            provider,
            start_time: ts("2026-03-08T00:00:00Z".parse().unwrap()),
            end_time: ts("2026-03-09T00:00:00Z".parse().unwrap()),
            duration: minutes(30),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let local: Vec<String> = starts(&slots)
        .iter()
        .map(|t| {
            t.to_zoned(jiff::tz::TimeZone::get("America/New_York").unwrap())
                .strftime("%H:%M %Z")
                .to_string()
        })
        .collect();
    let ends: Vec<i64> = slots
        .iter()
        .map(|s| of(&s.end_time).as_second() - of(&s.start_time).as_second())
        .collect();
    assert!(
        ends.iter().all(|secs| *secs == 1800),
        "30 real minutes each: {ends:?}"
    );
    assert_eq!(
        local,
        [
            "01:00 EST",
            "01:15 EST",
            "01:30 EST",
            "01:45 EST",
            "03:00 EDT",
            "03:15 EDT",
            "03:30 EDT"
        ]
    );
    suite.stop().await;
}

/// What the suite offers does not depend on the machine's `TZ`: this test runs itself
/// in child processes under two zones far apart and compares the slots, in UTC.
#[test]
fn offered_times_are_the_same_whatever_the_machines_time_zone() {
    if std::env::var_os("TOPSMILE_PRINT_SLOTS").is_some() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let slots = runtime.block_on(async {
            let (suite, _clock) = start(None).await;
            let c = clinic(&suite, "Zones", 0).await;
            let slots = find(&suite, &c.staff.staff, monday_morning(&c))
                .await
                .unwrap();
            suite.stop().await;
            slots
        });
        let text: Vec<String> = starts(&slots).iter().map(ToString::to_string).collect();
        println!("SLOTS {}", text.join(","));
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let mut seen = Vec::new();
    for tz in ["Pacific/Kiritimati", "America/Los_Angeles"] {
        let out = std::process::Command::new(&exe)
            .args([
                "--exact",
                "offered_times_are_the_same_whatever_the_machines_time_zone",
                "--nocapture",
            ])
            .env("TZ", tz)
            .env("TOPSMILE_PRINT_SLOTS", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let slots = text
            .lines()
            .find_map(|l| l.strip_prefix("SLOTS "))
            .unwrap_or_default()
            .to_owned();
        seen.push(slots);
    }
    let expected: Vec<String> = (0..15)
        .map(|i| (monday(8, 0) + SignedDuration::from_mins(15 * i)).to_string())
        .collect();
    assert_eq!(seen[0], expected.join(","), "TZ=Pacific/Kiritimati");
    assert_eq!(seen[1], seen[0], "TZ=America/Los_Angeles");
}

/// One random case of the agreement test: a clinic's step, a provider's Monday hours,
/// default length and buffers, and a few appointments already booked.
#[derive(Debug, Clone)]
struct Case {
    step_minutes: i64,
    hours: Vec<(i32, i32)>,
    length: i64,
    before: i64,
    after: i64,
    booked: Vec<usize>,
    probes: Vec<i64>,
}

fn case() -> impl proptest::strategy::Strategy<Value = Case> {
    use proptest::prelude::*;
    (
        prop::sample::select(vec![5i64, 10, 15, 20, 30]),
        // One or two intervals between 06:00 and 20:00, on five-minute marks.
        (72i32..150, 6i32..40, 0i32..30, 6i32..40),
        prop::sample::select(vec![15i64, 20, 30, 45, 60]),
        prop::sample::select(vec![0i64, 5, 10, 15]),
        prop::sample::select(vec![0i64, 5, 10, 15]),
        prop::collection::vec(0usize..1000, 0..4),
        prop::collection::vec(6 * 12i64..20 * 12, 12),
    )
        .prop_map(
            |(step, (a, len_a, gap, len_b), length, before, after, booked, probes)| {
                let first = (a * 5, (a + len_a) * 5);
                let second = (first.1 + gap * 5 + 5, first.1 + (gap + len_b) * 5 + 5);
                let hours = if second.1 <= 20 * 60 && gap % 2 == 0 {
                    vec![first, second]
                } else {
                    vec![first]
                };
                Case {
                    step_minutes: step,
                    hours,
                    length,
                    before,
                    after,
                    booked,
                    probes: probes.into_iter().map(|p| p * 5).collect(),
                }
            },
        )
}

/// Find and book agree, on random schedules: every slot FindAvailableSlots offers can
/// be booked (then cancelled again), and a time it does not offer is refused.
#[test]
fn every_offered_slot_books_and_no_other_time_does() {
    use proptest::test_runner::{Config, TestRunner};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (suite, _clock) = runtime.block_on(start(None));
    let mut runner = TestRunner::new(Config {
        cases: 6,
        ..Config::default()
    });
    let result = runner.run(&case(), |case| {
        runtime.block_on(agree(&suite, &case));
        Ok(())
    });
    runtime.block_on(suite.stop());
    result.unwrap();
}

async fn agree(suite: &TestSuite, case: &Case) {
    let staff = suite.clinic_with_staff("Agree").await;
    support::set_slot_step(suite, &staff, case.step_minutes).await;
    let provider = add_provider(
        suite,
        &staff,
        providers::Provider {
            display_name: "Dr. Random".into(),
            working_hours: weekdays(&case.hours),
            default_appointment_duration: minutes(case.length),
            buffer_before: minutes(case.before),
            buffer_after: minutes(case.after),
            ..Default::default()
        },
    )
    .await;
    let c = Clinic {
        name: staff.clinic.name.clone(),
        provider,
        patients: Vec::new(),
        staff,
    };
    let c = Clinic {
        patients: vec![support::a_patient(suite, &c.staff, "Agree").await],
        ..c
    };
    let desk = c.staff.staff.clone();
    let day = pb::FindAvailableSlotsRequest {
        parent: c.name.clone(),
        provider: c.provider.clone(),
        start_time: ts(monday(0, 0)),
        end_time: ts(monday(24, 0)),
        ..Default::default()
    };
    // A few appointments first (other patients' calendars do not matter here: each
    // booking below is for a patient with no other appointment).
    let offered = find(suite, &desk, day.clone()).await.unwrap();
    for pick in &case.booked {
        let now_offered = find(suite, &desk, day.clone()).await.unwrap();
        if now_offered.is_empty() {
            break;
        }
        let slot = &now_offered[pick % now_offered.len()];
        let other = support::a_patient(suite, &c.staff, "Other").await;
        let mut request = booking(&c, 0, of(&slot.start_time), None);
        if let Some(a) = request.appointment.as_mut() {
            a.patient = other.0;
        }
        book(suite, &desk, request).await.unwrap();
    }
    let offered_now = find(suite, &desk, day).await.unwrap();
    assert!(offered_now.len() <= offered.len());
    let mut client = appointments_as(suite, &desk).await;
    for slot in &offered_now {
        let start = of(&slot.start_time);
        let booked = book(suite, &desk, booking(&c, 0, start, None))
            .await
            .unwrap_or_else(|e| panic!("{case:?}: offered {start} was refused: {e:?}"));
        assert_eq!(of(&booked.end_time), of(&slot.end_time));
        client
            .cancel_appointment(pb::CancelAppointmentRequest {
                name: booked.name,
                reason: "agreement test".into(),
                etag: String::new(),
            })
            .await
            .unwrap();
    }
    let offered_starts = starts(&offered_now);
    for minute in &case.probes {
        let start = monday(0, *minute);
        if offered_starts.contains(&start) {
            continue;
        }
        let refused = book(suite, &desk, booking(&c, 0, start, None)).await;
        assert!(
            refused.is_err(),
            "{case:?}: {start} was not offered but booked"
        );
    }
}

/// A booking names an active patient and an active provider of the clinic; a
/// deactivated provider takes no new bookings, and their appointments stay listed.
#[tokio::test]
async fn bookings_need_an_active_patient_and_provider_of_the_clinic() {
    let (suite, _clock) = start(None).await;
    let c = clinic(&suite, "Members", 2).await;
    let other = clinic(&suite, "Elsewhere", 1).await;
    let desk = c.staff.staff.clone();
    let kept = book(&suite, &desk, booking(&c, 0, monday(9, 0), None))
        .await
        .unwrap();

    // A patient or provider that is not of this clinic is a bad request.
    let mut stranger = booking(&c, 0, monday(10, 0), None);
    if let Some(a) = stranger.appointment.as_mut() {
        a.patient = format!(
            "{}/patients/{}",
            c.name,
            topsmile_kit::names::ResourceId::generate()
        );
    }
    let err = book(&suite, &desk, stranger).await.unwrap_err();
    assert_eq!(violations(&err), ["appointment.patient"], "{err:?}");
    let mut foreign = booking(&c, 0, monday(10, 0), None);
    if let Some(a) = foreign.appointment.as_mut() {
        a.provider = other.provider.clone();
    }
    let err = book(&suite, &desk, foreign).await.unwrap_err();
    assert_eq!(violations(&err), ["appointment.provider"], "{err:?}");

    // A deactivated patient takes no new bookings.
    PatientServiceClient::with_interceptor(
        suite.channel().await,
        Bearer(Some(c.staff.admin.clone())),
    )
    .deactivate_patient(patients::DeactivatePatientRequest {
        name: c.patients[1].0.clone(),
        etag: String::new(),
    })
    .await
    .unwrap();
    let err = book(&suite, &desk, booking(&c, 1, monday(10, 0), None))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "PATIENT_INACTIVE", "{err:?}");

    // Nor does a deactivated provider; their appointments stay, and are listed.
    ProviderServiceClient::with_interceptor(
        suite.channel().await,
        Bearer(Some(c.staff.admin.clone())),
    )
    .deactivate_provider(providers::DeactivateProviderRequest {
        name: c.provider.clone(),
        etag: String::new(),
    })
    .await
    .unwrap();
    let err = book(&suite, &desk, booking(&c, 0, monday(11, 0), None))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "PROVIDER_INACTIVE", "{err:?}");
    let listed = appointments_as(&suite, &desk)
        .await
        .list_appointments(pb::ListAppointmentsRequest {
            parent: c.name.clone(),
            provider: c.provider.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .appointments;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, kept.name);
    suite.stop().await;
}

/// A search that names a patient (or is the patient's own) leaves out the times the
/// patient is already booked at, with any provider; without a patient it does not.
#[tokio::test]
async fn a_search_for_a_patient_leaves_out_their_booked_times() {
    let (suite, _clock) = start(None).await;
    let c = clinic(&suite, "Busy patient", 1).await;
    let bia = add_provider(
        &suite,
        &c.staff,
        providers::Provider {
            display_name: "Dr. Bia".into(),
            working_hours: weekdays(&[(8 * 60, 12 * 60)]),
            ..Default::default()
        },
    )
    .await;
    book(&suite, &c.staff.staff, booking(&c, 0, monday(9, 0), None))
        .await
        .unwrap();
    let with_bia = |patient: &str| pb::FindAvailableSlotsRequest {
        parent: c.name.clone(),
        provider: bia.clone(),
        start_time: ts(monday(8, 0)),
        end_time: ts(monday(12, 0)),
        patient: patient.to_owned(),
        ..Default::default()
    };
    let anyone = starts(&find(&suite, &c.staff.staff, with_bia("")).await.unwrap());
    assert!(anyone.contains(&monday(9, 0)) && anyone.contains(&monday(8, 45)));
    for (who, token, patient) in [
        (
            "staff naming the patient",
            &c.staff.staff,
            c.patients[0].0.as_str(),
        ),
        ("the patient", &c.patients[0].1, ""),
    ] {
        let theirs = starts(&find(&suite, token, with_bia(patient)).await.unwrap());
        for busy in [monday(8, 45), monday(9, 0), monday(9, 15)] {
            assert!(!theirs.contains(&busy), "{who}: {busy} is offered");
        }
        assert!(theirs.contains(&monday(9, 30)), "{who}");
    }
    suite.stop().await;
}

/// The n-th 50-minute visit of Dr. Ana's week from Monday: on the hour, 9 a day.
fn hour_slot(n: usize) -> Timestamp {
    let hours = [8, 9, 10, 11, 13, 14, 15, 16, 17];
    let day = i64::try_from(n / hours.len()).unwrap_or(0);
    monday(hours[n % hours.len()], 0) + SignedDuration::from_hours(24 * day)
}

async fn cancel(suite: &TestSuite, token: &str, name: &str) {
    appointments_as(suite, token)
        .await
        .cancel_appointment(pb::CancelAppointmentRequest {
            name: name.into(),
            reason: "changed my mind".into(),
            etag: String::new(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_portal_patient_cannot_empty_a_providers_calendar() {
    patient_limits(None).await;
}

#[tokio::test]
async fn a_portal_patient_cannot_empty_a_providers_calendar_on_mongodb() {
    if let Some(store) =
        mongo_store("a_portal_patient_cannot_empty_a_providers_calendar_on_mongodb")
    {
        patient_limits(Some(store)).await;
    }
}

/// 30 bookings at once from one portal patient: 3 go through (the clinic's cap on
/// appointments to come), the rest are PATIENT_LIMIT; cancelling frees a seat, but
/// the day's 5 self-service bookings stay used; staff are not limited.
async fn patient_limits(store: Option<topsmile_kit::store::StoreChoice>) {
    let (suite, _clock) = start(store).await;
    let c = clinic(&suite, "Limits", 1).await;
    let (_, me) = c.patients[0].clone();
    let mut at_once = Vec::new();
    for n in 0..30 {
        let request = booking(&c, 0, hour_slot(n), Some(50));
        let suite = &suite;
        let me = me.clone();
        at_once.push(async move { book(suite, &me, request).await });
    }
    let results = join_all(at_once).await;
    let booked: Vec<pb::Appointment> = results.iter().filter_map(|r| r.clone().ok()).collect();
    assert_eq!(booked.len(), 3, "{results:?}");
    for err in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert_eq!(reason(err), "PATIENT_LIMIT", "{err:?}");
    }
    // Staff book for the patient beyond the cap.
    book(
        &suite,
        &c.staff.staff,
        booking(&c, 0, hour_slot(40), Some(50)),
    )
    .await
    .expect("staff are not limited");
    let listed = appointments_as(&suite, &c.staff.staff)
        .await
        .list_appointments(pb::ListAppointmentsRequest {
            parent: c.name.clone(),
            patient: c.patients[0].0.clone(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .appointments;
    assert_eq!(listed.len(), 4, "nothing else was booked: {listed:?}");

    // A cancel frees a seat of the cap: booked 4 and 5 of the day go through ...
    cancel(&suite, &me, &booked[0].name).await;
    let fourth = book(&suite, &me, booking(&c, 0, hour_slot(31), Some(50)))
        .await
        .unwrap();
    let err = book(&suite, &me, booking(&c, 0, hour_slot(32), Some(50)))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "PATIENT_LIMIT", "the cap again: {err:?}");
    cancel(&suite, &me, &fourth.name).await;
    book(&suite, &me, booking(&c, 0, hour_slot(33), Some(50)))
        .await
        .unwrap();
    // ... and with the day's five used, a freed seat does not help.
    cancel(&suite, &me, &booked[1].name).await;
    let err = book(&suite, &me, booking(&c, 0, hour_slot(34), Some(50)))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "PATIENT_LIMIT", "the day's limit: {err:?}");
    assert!(err.message().contains("a day"), "{err:?}");

    // The limits are the clinic's rules: shown with their defaults, bounded.
    let mut clinics =
        topsmile_proto::topsmile::identity::v1::clinic_service_client::ClinicServiceClient::with_interceptor(
            suite.channel().await,
            Bearer(Some(c.staff.admin.clone())),
        );
    let rules = clinics
        .get_clinic(topsmile_proto::topsmile::identity::v1::GetClinicRequest {
            name: c.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .clinic
        .unwrap()
        .booking_rules
        .unwrap();
    assert_eq!(
        (rules.patient_active_limit, rules.patient_daily_limit),
        (3, 5)
    );
    let err = clinics
        .update_clinic(
            topsmile_proto::topsmile::identity::v1::UpdateClinicRequest {
                clinic: Some(topsmile_proto::topsmile::identity::v1::Clinic {
                    name: c.name.clone(),
                    booking_rules: Some(topsmile_proto::topsmile::identity::v1::BookingRules {
                        patient_active_limit: 51,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["booking_rules".into()],
                }),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        violations(&err),
        ["clinic.booking_rules.patient_active_limit"]
    );
    suite.stop().await;
}
