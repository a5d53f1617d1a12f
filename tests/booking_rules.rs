//! A clinic's booking rules (which the appointments service applies): every clinic has
//! them, with defaults; its ADMIN changes them like any clinic field; each is checked.

mod support;

use prost_types::{Duration, FieldMask};
use support::{Bearer, TestSuite, mongo_store};
use tonic::Code;
use tonic_types::StatusExt;
use topsmile_proto::topsmile::identity::v1::{
    self as identity, clinic_service_client::ClinicServiceClient,
};

fn minutes(m: i64) -> Option<Duration> {
    Some(Duration {
        seconds: m * 60,
        nanos: 0,
    })
}

async fn booking_rules_are_set_on_the_clinic(suite: TestSuite) {
    let a = suite.clinic_with_staff("Rules").await;
    let clinics = |token: &str| {
        let token = token.to_owned();
        let suite = &suite;
        async move { ClinicServiceClient::with_interceptor(suite.channel().await, Bearer(Some(token))) }
    };
    // Defaults: 2 hours' notice, a year ahead, 15-minute steps, 24-hour cut-off.
    let rules = a.clinic.booking_rules.unwrap();
    assert_eq!(rules.minimum_notice, minutes(120));
    assert_eq!(rules.booking_horizon, minutes(365 * 24 * 60));
    assert_eq!(rules.slot_step, minutes(15));
    assert_eq!(rules.patient_change_cutoff, minutes(24 * 60));

    // The ADMIN sets two of them; the others keep their defaults.
    let updated = clinics(&a.admin)
        .await
        .update_clinic(identity::UpdateClinicRequest {
            clinic: Some(identity::Clinic {
                name: a.clinic.name.clone(),
                booking_rules: Some(identity::BookingRules {
                    slot_step: minutes(30),
                    minimum_notice: minutes(60),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["booking_rules".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .clinic
        .unwrap();
    let rules = updated.booking_rules.unwrap();
    assert_eq!(rules.slot_step, minutes(30));
    assert_eq!(rules.minimum_notice, minutes(60));
    assert_eq!(rules.booking_horizon, minutes(365 * 24 * 60));
    assert_eq!(
        updated.display_name, a.clinic.display_name,
        "nothing else changed"
    );
    let read = clinics(&a.staff)
        .await
        .get_clinic(identity::GetClinicRequest {
            name: a.clinic.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .clinic
        .unwrap();
    assert_eq!(read.booking_rules, Some(rules));

    // A step that does not divide a day is refused, naming the rule.
    let err = clinics(&a.admin)
        .await
        .update_clinic(identity::UpdateClinicRequest {
            clinic: Some(identity::Clinic {
                name: a.clinic.name.clone(),
                booking_rules: Some(identity::BookingRules {
                    slot_step: minutes(7),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<String> = err
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    assert_eq!(fields, ["clinic.booking_rules.slot_step"]);

    // STAFF may not change them.
    let refused = clinics(&a.staff)
        .await
        .update_clinic(identity::UpdateClinicRequest {
            clinic: Some(identity::Clinic {
                name: a.clinic.name.clone(),
                booking_rules: Some(identity::BookingRules::default()),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    suite.stop().await;
}

#[tokio::test]
async fn booking_rules_have_defaults_and_an_admin_sets_them() {
    booking_rules_are_set_on_the_clinic(TestSuite::start().await).await;
}

#[tokio::test]
async fn booking_rules_have_defaults_and_an_admin_sets_them_on_mongodb() {
    if let Some(store) = mongo_store("booking_rules_on_mongodb") {
        booking_rules_are_set_on_the_clinic(TestSuite::start_on(store).await).await;
    }
}
