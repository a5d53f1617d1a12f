//! Providers through the gateway, as a clinic meets them: an ADMIN adds dentists with
//! their weekly hours, holidays and absences; a PROVIDER keeps their own calendar;
//! STAFF read; patients see the public view of active providers; other clinics see
//! nothing. Each journey runs on the embedded store and on MongoDB.

mod support;

use support::violations;

use prost_types::{Duration, FieldMask, Timestamp};
use support::{Authed, Bearer, ClinicStaff, TestSuite, mongo_store};
use tonic::{Code, Status};
use topsmile_kit::names::ResourceId;
use topsmile_proto::{
    google::r#type::{Date, DayOfWeek},
    topsmile::{
        identity::v1::{
            self as identity, clinic_service_client::ClinicServiceClient,
            user_service_client::UserServiceClient,
        },
        providers::v1::{self as pb, provider_service_client::ProviderServiceClient},
    },
};

async fn providers_as(suite: &TestSuite, token: &str) -> ProviderServiceClient<Authed> {
    ProviderServiceClient::with_interceptor(suite.channel().await, Bearer(Some(token.into())))
}

fn minutes(m: i64) -> Option<Duration> {
    Some(Duration {
        seconds: m * 60,
        nanos: 0,
    })
}

fn day(day: DayOfWeek, spans: &[(i32, i32)]) -> pb::WorkingDay {
    pb::WorkingDay {
        day: day as i32,
        intervals: spans
            .iter()
            .map(|&(start_minute, end_minute)| pb::TimeInterval {
                start_minute,
                end_minute,
            })
            .collect(),
    }
}

fn at(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

/// Dr. Ana: weekdays 08:00-12:00 and 13:00-18:00, closed on Christmas Day, a
/// conference in January, linked to `user` if given.
fn dr_ana(user: &str) -> pb::Provider {
    let split = [(8 * 60, 12 * 60), (13 * 60, 18 * 60)];
    pb::Provider {
        display_name: "Dr. Ana Souza".into(),
        email: "ana@example.com".into(),
        phone: "+55 11 5555-0101".into(),
        specialties: vec!["Orthodontics".into(), "Endodontics".into()],
        license_number: "CRO-SP 12345".into(),
        user: user.into(),
        working_hours: [
            DayOfWeek::Monday,
            DayOfWeek::Tuesday,
            DayOfWeek::Wednesday,
            DayOfWeek::Thursday,
            DayOfWeek::Friday,
        ]
        .into_iter()
        .map(|d| day(d, &split))
        .collect(),
        date_overrides: vec![pb::DateOverride {
            date: Some(Date {
                year: 2026,
                month: 12,
                day: 25,
            }),
            intervals: vec![],
        }],
        time_off: vec![pb::TimeOff {
            // 2027-01-11 to 2027-01-13 UTC.
            start_time: at(1_799_625_600),
            end_time: at(1_799_798_400),
            reason: "conference".into(),
        }],
        buffer_after: minutes(10),
        ..Default::default()
    }
}

fn a_dentist(display_name: &str, specialty: &str) -> pb::Provider {
    pb::Provider {
        display_name: display_name.into(),
        specialties: vec![specialty.into()],
        working_hours: vec![day(DayOfWeek::Saturday, &[(9 * 60, 13 * 60)])],
        ..Default::default()
    }
}

async fn create(
    suite: &TestSuite,
    token: &str,
    clinic: &str,
    provider: pb::Provider,
    request_id: &str,
) -> Result<pb::Provider, Status> {
    providers_as(suite, token)
        .await
        .create_provider(pb::CreateProviderRequest {
            parent: clinic.into(),
            provider: Some(provider),
            request_id: request_id.into(),
        })
        .await
        .map(|r| r.into_inner().provider.unwrap_or_default())
}

async fn list(
    suite: &TestSuite,
    token: &str,
    request: pb::ListProvidersRequest,
) -> Result<Vec<pb::Provider>, Status> {
    let mut all = Vec::new();
    let mut request = request;
    loop {
        let page = providers_as(suite, token)
            .await
            .list_providers(request.clone())
            .await?
            .into_inner();
        all.extend(page.providers);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        request.page_token = page.next_page_token;
    }
}

fn names(providers: &[pb::Provider]) -> Vec<&str> {
    providers.iter().map(|p| p.display_name.as_str()).collect()
}

fn schedule_mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

async fn a_clinic_runs_its_providers(suite: TestSuite) {
    let a = suite.clinic_with_staff("Providers").await;
    let clinic = a.clinic.name.clone();

    // The ADMIN adds Dr. Ana, linked to the clinic's PROVIDER user; a retry with the
    // same request id is the same provider.
    let ana = create(
        &suite,
        &a.admin,
        &clinic,
        dr_ana(&a.provider_name),
        "add-ana",
    )
    .await
    .unwrap();
    assert!(ana.name.starts_with(&format!("{clinic}/providers/")));
    assert_eq!(ana.specialties, ["endodontics", "orthodontics"]);
    assert_eq!(ana.working_hours.len(), 5);
    assert_eq!(
        ana.working_hours[0],
        day(DayOfWeek::Monday, &[(480, 720), (780, 1080)])
    );
    assert_eq!(ana.date_overrides, dr_ana("").date_overrides);
    assert_eq!(ana.time_off, dr_ana("").time_off);
    assert_eq!(ana.default_appointment_duration, minutes(30), "the default");
    assert_eq!(ana.buffer_after, minutes(10));
    assert_eq!(ana.user, a.provider_name);
    assert!(ana.is_active);
    let again = create(
        &suite,
        &a.admin,
        &clinic,
        dr_ana(&a.provider_name),
        "add-ana",
    )
    .await
    .unwrap();
    assert_eq!(again.name, ana.name, "a retried create is the first one");

    // One provider per user.
    let err = create(&suite, &a.admin, &clinic, dr_ana(&a.provider_name), "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    let bruno = create(
        &suite,
        &a.admin,
        &clinic,
        a_dentist("Dr. Bruno", "Orthodontics"),
        "",
    )
    .await
    .unwrap();
    let carla = create(
        &suite,
        &a.admin,
        &clinic,
        a_dentist("Dr. Carla", "Periodontics"),
        "",
    )
    .await
    .unwrap();

    // Lists: every page in creation order, one at a time, and by specialty.
    let all = list(
        &suite,
        &a.staff,
        pb::ListProvidersRequest {
            parent: clinic.clone(),
            page_size: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(names(&all), ["Dr. Ana Souza", "Dr. Bruno", "Dr. Carla"]);
    let orthodontists = list(
        &suite,
        &a.staff,
        pb::ListProvidersRequest {
            parent: clinic.clone(),
            specialty: " ORTHODONTICS ".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(names(&orthodontists), ["Dr. Ana Souza", "Dr. Bruno"]);

    // STAFF read everything and change nothing.
    let seen = providers_as(&suite, &a.staff)
        .await
        .get_provider(pb::GetProviderRequest {
            name: ana.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .provider
        .unwrap();
    assert_eq!(seen, again);
    let err = providers_as(&suite, &a.staff)
        .await
        .update_provider(pb::UpdateProviderRequest {
            provider: Some(pb::Provider {
                name: ana.name.clone(),
                display_name: "Taken over".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // The ADMIN renames with an empty mask: only the fields that are set change.
    let renamed = providers_as(&suite, &a.admin)
        .await
        .update_provider(pb::UpdateProviderRequest {
            provider: Some(pb::Provider {
                name: ana.name.clone(),
                display_name: "Dr. Ana S. Souza".into(),
                etag: ana.etag.clone(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap()
        .into_inner()
        .provider
        .unwrap();
    assert_eq!(renamed.display_name, "Dr. Ana S. Souza");
    assert_eq!(
        pb::Provider {
            display_name: ana.display_name.clone(),
            etag: ana.etag.clone(),
            update_time: ana.update_time,
            ..renamed.clone()
        },
        ana,
        "every other field is kept"
    );
    // The old etag is stale now.
    let err = providers_as(&suite, &a.admin)
        .await
        .update_provider(pb::UpdateProviderRequest {
            provider: Some(pb::Provider {
                name: ana.name.clone(),
                display_name: "Lost update".into(),
                etag: ana.etag.clone(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);

    // Dr. Ana (the PROVIDER user) keeps her own calendar: Saturday mornings, no buffer.
    let saturday = providers_as(&suite, &a.provider)
        .await
        .update_provider(pb::UpdateProviderRequest {
            provider: Some(pb::Provider {
                name: ana.name.clone(),
                working_hours: vec![day(DayOfWeek::Saturday, &[(9 * 60, 12 * 60)])],
                buffer_after: minutes(0),
                ..Default::default()
            }),
            update_mask: schedule_mask(&["working_hours", "buffer_after"]),
        })
        .await
        .unwrap()
        .into_inner()
        .provider
        .unwrap();
    assert_eq!(
        saturday.working_hours,
        [day(DayOfWeek::Saturday, &[(540, 720)])]
    );
    assert_eq!(saturday.buffer_after, minutes(0));
    assert_eq!(saturday.display_name, "Dr. Ana S. Souza");
    // ...but not who she is, nor anyone else's calendar.
    for (name, paths) in [
        (&ana.name, &["display_name"][..]),
        (&ana.name, &["working_hours", "license_number"][..]),
        (&bruno.name, &["working_hours"][..]),
    ] {
        let err = providers_as(&suite, &a.provider)
            .await
            .update_provider(pb::UpdateProviderRequest {
                provider: Some(pb::Provider {
                    name: name.clone(),
                    display_name: "Changed".into(),
                    license_number: "forged".into(),
                    ..Default::default()
                }),
                update_mask: schedule_mask(paths),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{paths:?} of {name}");
    }

    // A patient of the clinic sees the public view of active providers.
    let (_, patient) = support::a_patient(&suite, &a, "Public").await;
    let public = providers_as(&suite, &patient)
        .await
        .get_provider(pb::GetProviderRequest {
            name: ana.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .provider
        .unwrap();
    assert_eq!(
        public,
        pb::Provider {
            name: ana.name.clone(),
            display_name: "Dr. Ana S. Souza".into(),
            specialties: vec!["endodontics".into(), "orthodontics".into()],
            default_appointment_duration: minutes(30),
            is_active: true,
            ..Default::default()
        },
        "no email, phone, licence, user or calendar"
    );

    // Deactivation: no longer offered to patients; staff still find it on request.
    let deactivated = providers_as(&suite, &a.admin)
        .await
        .deactivate_provider(pb::DeactivateProviderRequest {
            name: carla.name.clone(),
            etag: carla.etag.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .provider
        .unwrap();
    assert!(!deactivated.is_active);
    let err = providers_as(&suite, &patient)
        .await
        .get_provider(pb::GetProviderRequest {
            name: carla.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    for show_inactive in [false, true] {
        let seen = list(
            &suite,
            &patient,
            pb::ListProvidersRequest {
                parent: clinic.clone(),
                show_inactive,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(names(&seen), ["Dr. Ana S. Souza", "Dr. Bruno"]);
        assert!(
            seen.iter()
                .all(|p| p.email.is_empty() && p.working_hours.is_empty())
        );
    }
    let active = list(
        &suite,
        &a.staff,
        pb::ListProvidersRequest {
            parent: clinic.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(names(&active), ["Dr. Ana S. Souza", "Dr. Bruno"]);
    let everyone = list(
        &suite,
        &a.staff,
        pb::ListProvidersRequest {
            parent: clinic.clone(),
            show_inactive: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        names(&everyone),
        ["Dr. Ana S. Souza", "Dr. Bruno", "Dr. Carla"]
    );
    // A page token only continues its own list.
    let first = providers_as(&suite, &a.staff)
        .await
        .list_providers(pb::ListProvidersRequest {
            parent: clinic.clone(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let err = providers_as(&suite, &a.staff)
        .await
        .list_providers(pb::ListProvidersRequest {
            parent: clinic.clone(),
            page_size: 1,
            show_inactive: true,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&err), ["page_token"]);
    suite.stop().await;
}

#[tokio::test]
async fn a_clinic_runs_its_providers_through_the_gateway() {
    a_clinic_runs_its_providers(TestSuite::start().await).await;
}

#[tokio::test]
async fn a_clinic_runs_its_providers_through_the_gateway_on_mongodb() {
    if let Some(store) = mongo_store("a_clinic_runs_its_providers_on_mongodb") {
        a_clinic_runs_its_providers(TestSuite::start_on(store).await).await;
    }
}

async fn linked_users_are_checked(suite: TestSuite) {
    let a = suite.clinic_with_staff("Linked A").await;
    let b = suite.clinic_with_staff("Linked B").await;
    let clinic = a.clinic.name.clone();
    let unknown = format!("{clinic}/users/{}", ResourceId::generate());
    for (user, why) in [
        (&b.provider_name, "another clinic's provider"),
        (&a.admin_name, "not a PROVIDER"),
        (&a.staff_name, "not a PROVIDER"),
        (&unknown, "no such user"),
        (&"users/someone".to_owned(), "not a user name"),
    ] {
        let err = create(&suite, &a.admin, &clinic, dr_ana(user), "")
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{why}: {err:?}");
        assert_eq!(violations(&err), ["provider.user"], "{why}");
    }
    // A deactivated PROVIDER user cannot be linked either.
    let mut users =
        UserServiceClient::with_interceptor(suite.channel().await, Bearer(Some(a.admin.clone())));
    let gone = users
        .create_user(identity::CreateUserRequest {
            parent: clinic.clone(),
            user: Some(identity::User {
                email: format!("gone.{}@example.com", ResourceId::generate()),
                display_name: "Dr. Gone".into(),
                role: identity::UserRole::Provider as i32,
                ..Default::default()
            }),
            password: support::STAFF_PASSWORD.into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    users
        .deactivate_user(identity::DeactivateUserRequest {
            name: gone.name.clone(),
            etag: String::new(),
        })
        .await
        .unwrap();
    let err = create(&suite, &a.admin, &clinic, dr_ana(&gone.name), "")
        .await
        .unwrap_err();
    assert_eq!(violations(&err), ["provider.user"], "deactivated: {err:?}");

    // The link can be made (and changed) later, with the same checks.
    let unlinked = create(&suite, &a.admin, &clinic, a_dentist("Dr. Later", "x"), "")
        .await
        .unwrap();
    let link = |user: &str| pb::UpdateProviderRequest {
        provider: Some(pb::Provider {
            name: unlinked.name.clone(),
            user: user.into(),
            ..Default::default()
        }),
        update_mask: schedule_mask(&["user"]),
    };
    let err = providers_as(&suite, &a.admin)
        .await
        .update_provider(link(&b.provider_name))
        .await
        .unwrap_err();
    assert_eq!(violations(&err), ["provider.user"]);
    let linked = providers_as(&suite, &a.admin)
        .await
        .update_provider(link(&a.provider_name))
        .await
        .unwrap()
        .into_inner()
        .provider
        .unwrap();
    assert_eq!(linked.user, a.provider_name);
    // Now linked, that PROVIDER keeps this calendar.
    providers_as(&suite, &a.provider)
        .await
        .update_provider(pb::UpdateProviderRequest {
            provider: Some(pb::Provider {
                name: unlinked.name.clone(),
                time_off: dr_ana("").time_off,
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap();
    suite.stop().await;
}

#[tokio::test]
async fn a_linked_user_is_a_provider_of_the_same_clinic() {
    linked_users_are_checked(TestSuite::start().await).await;
}

#[tokio::test]
async fn a_linked_user_is_a_provider_of_the_same_clinic_on_mongodb() {
    if let Some(store) = mongo_store("a_linked_user_is_a_provider_of_the_same_clinic_on_mongodb") {
        linked_users_are_checked(TestSuite::start_on(store).await).await;
    }
}

#[tokio::test]
async fn every_problem_in_a_provider_is_one_violation() {
    let suite = TestSuite::start().await;
    let a = suite.clinic_with_staff("Bad input").await;
    let bad = pb::Provider {
        display_name: "  ".into(),
        working_hours: vec![
            day(DayOfWeek::Monday, &[(8 * 60, 12 * 60), (11 * 60, 13 * 60)]),
            day(DayOfWeek::Tuesday, &[(600, 540), (-1, 30), (1000, 1441)]),
            day(DayOfWeek::Monday, &[]),
            day(DayOfWeek::Unspecified, &[]),
        ],
        date_overrides: vec![pb::DateOverride {
            date: Some(Date {
                year: 2026,
                month: 2,
                day: 30,
            }),
            intervals: vec![],
        }],
        time_off: vec![
            pb::TimeOff {
                start_time: at(2_000_000_000),
                end_time: at(1_900_000_000),
                reason: "backwards".into(),
            },
            pb::TimeOff {
                start_time: None,
                end_time: at(1_900_000_000),
                reason: String::new(),
            },
        ],
        default_appointment_duration: minutes(4),
        buffer_before: minutes(-5),
        buffer_after: Some(Duration {
            seconds: 60,
            nanos: 5,
        }),
        ..Default::default()
    };
    let err = create(&suite, &a.admin, &a.clinic.name, bad, "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        violations(&err),
        [
            "provider.buffer_after",
            "provider.display_name",
            "provider.working_hours[0].intervals[1]",
            "provider.working_hours[1].intervals[0]",
            "provider.working_hours[1].intervals[1]",
            "provider.working_hours[1].intervals[2]",
            "provider.working_hours[2].day",
            "provider.working_hours[3].day",
            "provider.date_overrides[0].date",
            "provider.time_off[0].end_time",
            "provider.time_off[1].start_time",
            "provider.default_appointment_duration",
            "provider.buffer_before",
        ]
    );
    // Too many entries are one violation each, however many there are.
    let crowded = pb::Provider {
        time_off: vec![
            pb::TimeOff {
                start_time: at(1_900_000_000),
                end_time: at(1_900_003_600),
                reason: String::new(),
            };
            101
        ],
        working_hours: vec![day(
            DayOfWeek::Friday,
            &(0..7).map(|i| (i * 100, i * 100 + 50)).collect::<Vec<_>>(),
        )],
        ..a_dentist("Dr. Busy", "x")
    };
    let err = create(&suite, &a.admin, &a.clinic.name, crowded, "")
        .await
        .unwrap_err();
    assert_eq!(
        violations(&err),
        ["provider.working_hours[0].intervals", "provider.time_off"]
    );
    // Nothing was written.
    let none = list(
        &suite,
        &a.admin,
        pb::ListProvidersRequest {
            parent: a.clinic.name.clone(),
            show_inactive: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(none.is_empty(), "{none:?}");
    suite.stop().await;
}

/// Every method, aimed by each role of clinic A at clinic B's provider: PERMISSION_DENIED,
/// through the gateway and straight at the providers service; B's provider unchanged.
#[tokio::test]
async fn other_clinics_cannot_reach_a_clinics_providers() {
    let suite = TestSuite::start().await;
    let a = suite.clinic_with_staff("Prober").await;
    let b = suite.clinic_with_staff("Target").await;
    let target = create(&suite, &b.admin, &b.clinic.name, dr_ana(""), "")
        .await
        .unwrap();
    let (_, patient) = support::a_patient(&suite, &a, "Prober").await;
    let direct = support::connect(suite.suite.services["providers"]).await;
    for channel in [suite.channel().await, direct] {
        for (who, token) in [
            ("admin", &a.admin),
            ("provider", &a.provider),
            ("staff", &a.staff),
            ("patient", &patient),
        ] {
            let mut client = ProviderServiceClient::with_interceptor(
                channel.clone(),
                Bearer(Some(token.clone())),
            );
            let codes = [
                client
                    .get_provider(pb::GetProviderRequest {
                        name: target.name.clone(),
                    })
                    .await
                    .map(drop),
                client
                    .list_providers(pb::ListProvidersRequest {
                        parent: b.clinic.name.clone(),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
                client
                    .create_provider(pb::CreateProviderRequest {
                        parent: b.clinic.name.clone(),
                        provider: Some(a_dentist("Planted", "x")),
                        request_id: String::new(),
                    })
                    .await
                    .map(drop),
                client
                    .update_provider(pb::UpdateProviderRequest {
                        provider: Some(pb::Provider {
                            name: target.name.clone(),
                            display_name: "Taken over".into(),
                            ..Default::default()
                        }),
                        update_mask: None,
                    })
                    .await
                    .map(drop),
                client
                    .deactivate_provider(pb::DeactivateProviderRequest {
                        name: target.name.clone(),
                        etag: String::new(),
                    })
                    .await
                    .map(drop),
            ]
            .map(|r| r.map_or_else(|e| e.code(), |()| Code::Ok));
            assert_eq!(codes, [Code::PermissionDenied; 5], "{who}");
        }
    }
    let still = list(
        &suite,
        &b.admin,
        pb::ListProvidersRequest {
            parent: b.clinic.name.clone(),
            show_inactive: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(still, [target]);
    suite.stop().await;
}

/// A deactivated clinic's providers are read-only, like the rest of its records.
#[tokio::test]
async fn a_deactivated_clinics_providers_are_read_only() {
    let suite = TestSuite::start().await;
    let a = suite.clinic_with_staff("Closing").await;
    let ana = create(&suite, &a.admin, &a.clinic.name, dr_ana(""), "")
        .await
        .unwrap();
    suite
        .clinics()
        .await
        .deactivate_clinic(identity::DeactivateClinicRequest {
            name: a.clinic.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = providers_as(&suite, &a.admin)
        .await
        .update_provider(pb::UpdateProviderRequest {
            provider: Some(pb::Provider {
                name: ana.name.clone(),
                display_name: "Still here".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let read = providers_as(&suite, &a.admin)
        .await
        .get_provider(pb::GetProviderRequest {
            name: ana.name.clone(),
        })
        .await;
    // A deactivated clinic signs nobody in, but tokens already issued still read.
    assert!(
        matches!(&read, Ok(r) if r.get_ref().provider.as_ref() == Some(&ana)),
        "{read:?}"
    );
    suite.stop().await;
}

/// The zone schedules are read in is the clinic's as it is now: after the clinic moves
/// to another zone, the same weekly hours are other instants.
#[tokio::test]
async fn a_clinics_new_time_zone_moves_its_working_hours() {
    use topsmile_kit::clinics::ClinicDirectory;
    use topsmile_providers::domain::{Interval, Schedule, working_intervals};

    let suite = TestSuite::start().await;
    let a: ClinicStaff = suite.clinic_with_staff("Moving").await;
    let id = ResourceId::parse(a.clinic.name.trim_start_matches("clinics/")).unwrap();
    let identity = vec![suite.suite.services["identity"].to_string()];
    let directory = ClinicDirectory::caching_for(&identity, std::time::Duration::ZERO).unwrap();
    let mut weekly: [Vec<Interval>; 7] = Default::default();
    weekly[0] = vec![Interval {
        start_minute: 9 * 60,
        end_minute: 10 * 60,
    }];
    let schedule = Schedule {
        weekly,
        ..Schedule::default()
    };
    // Monday 2026-12-07, the whole day in UTC and around it.
    let from: jiff::Timestamp = "2026-12-06T12:00:00Z".parse().unwrap();
    let to: jiff::Timestamp = "2026-12-08T12:00:00Z".parse().unwrap();
    let monday_nine = |zone: &str| {
        let tz = jiff::tz::TimeZone::get(zone).unwrap();
        working_intervals(&schedule, &tz, from, to)
    };
    let before = directory.get(&id, &a.admin).await.unwrap();
    assert_eq!(before.time_zone, "America/Sao_Paulo");
    let sao_paulo = monday_nine(&before.time_zone);
    assert_eq!(sao_paulo[0].start.to_string(), "2026-12-07T12:00:00Z");

    ClinicServiceClient::with_interceptor(suite.channel().await, Bearer(Some(a.admin.clone())))
        .update_clinic(identity::UpdateClinicRequest {
            clinic: Some(identity::Clinic {
                name: a.clinic.name.clone(),
                time_zone: "Europe/Berlin".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap();
    let after = directory.get(&id, &a.admin).await.unwrap();
    assert_eq!(after.time_zone, "Europe/Berlin");
    assert_eq!(
        monday_nine(&after.time_zone)[0].start.to_string(),
        "2026-12-07T08:00:00Z"
    );
    suite.stop().await;
}

/// The clinic's audit trail as its ADMIN reads it: (action, actor, outcome) of every
/// event about `resource` (empty: every event), oldest first.
async fn trail_of(
    suite: &TestSuite,
    a: &ClinicStaff,
    resource: &str,
) -> Vec<(String, String, String)> {
    use topsmile_proto::topsmile::patients::v1 as patients;
    patients::audit_service_client::AuditServiceClient::with_interceptor(
        suite.channel().await,
        Bearer(Some(a.admin.clone())),
    )
    .list_audit_events(patients::ListAuditEventsRequest {
        parent: a.clinic.name.clone(),
        resource: resource.into(),
        page_size: 100,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .audit_events
    .into_iter()
    .filter(|e| e.action.starts_with("ProviderService/"))
    .map(|e| (e.action, e.actor, e.outcome))
    .collect()
}

async fn provider_changes_are_audited(suite: TestSuite) {
    let a = suite.clinic_with_staff("Audited Providers").await;
    let ana = create(&suite, &a.admin, &a.clinic.name, dr_ana(""), "")
        .await
        .unwrap();
    let mut admin = providers_as(&suite, &a.admin).await;
    admin
        .update_provider(pb::UpdateProviderRequest {
            provider: Some(pb::Provider {
                name: ana.name.clone(),
                display_name: "Dr. Ana S. Souza".into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["display_name".into()],
            }),
        })
        .await
        .unwrap();
    // Refused: STAFF may not deactivate; a stale etag changes nothing.
    let refused = providers_as(&suite, &a.staff)
        .await
        .deactivate_provider(pb::DeactivateProviderRequest {
            name: ana.name.clone(),
            etag: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let stale = admin
        .deactivate_provider(pb::DeactivateProviderRequest {
            name: ana.name.clone(),
            etag: "1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    admin
        .deactivate_provider(pb::DeactivateProviderRequest {
            name: ana.name.clone(),
            etag: String::new(),
        })
        .await
        .unwrap();
    let own = |action: &str, outcome: &str| {
        (
            format!("ProviderService/{action}"),
            a.admin_name.clone(),
            outcome.to_owned(),
        )
    };
    assert_eq!(
        trail_of(&suite, &a, &ana.name).await,
        [
            own("CreateProvider", "PENDING"),
            own("CreateProvider", "OK"),
            own("UpdateProvider", "PENDING"),
            own("UpdateProvider", "OK"),
            own("DeactivateProvider", "ETAG_MISMATCH"),
            own("DeactivateProvider", "PENDING"),
            own("DeactivateProvider", "OK"),
        ]
    );
    let refusals: Vec<_> = trail_of(&suite, &a, "")
        .await
        .into_iter()
        .filter(|(_, actor, _)| *actor == a.staff_name)
        .collect();
    assert_eq!(
        refusals,
        [(
            "ProviderService/DeactivateProvider".to_owned(),
            a.staff_name.clone(),
            "PERMISSION_DENIED".to_owned()
        )],
        "a refused change is in the trail too"
    );
    suite.stop().await;
}

#[tokio::test]
async fn provider_changes_are_in_the_clinics_audit_trail() {
    provider_changes_are_audited(TestSuite::start().await).await;
}

#[tokio::test]
async fn provider_changes_are_in_the_clinics_audit_trail_on_mongodb() {
    if let Some(store) = mongo_store("provider_changes_are_in_the_clinics_audit_trail_on_mongodb") {
        provider_changes_are_audited(TestSuite::start_on(store).await).await;
    }
}
