//! `topsmile seed` against a running suite, through its gateway: it makes what the plan
//! says, the sign-in details it prints work, and a second run adds nothing.

mod support;

use support::{Bearer, ROOT_EMAIL, ROOT_PASSWORD, TestSuite};
use topsmile::seed::{Plan, SEED_PASSWORD, Target, run};
use topsmile_proto::topsmile::{
    appointments::v1::{
        self as appointments, appointment_service_client::AppointmentServiceClient,
    },
    identity::v1::{self as identity, auth_service_client::AuthServiceClient},
    patients::v1::{self as patients, patient_service_client::PatientServiceClient},
    providers::v1::{self as providers, provider_service_client::ProviderServiceClient},
};

/// Counts (patients, providers, appointments) of `clinic`, page after page.
async fn census(suite: &TestSuite, token: &str, clinic: &str) -> (usize, usize, usize) {
    let channel = suite.channel().await;
    let bearer = Bearer(Some(token.to_owned()));
    let mut patients_seen = 0;
    let mut page_token = String::new();
    loop {
        let page = PatientServiceClient::with_interceptor(channel.clone(), bearer.clone())
            .list_patients(patients::ListPatientsRequest {
                parent: clinic.to_owned(),
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        patients_seen += page.patients.len();
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let providers_seen = ProviderServiceClient::with_interceptor(channel.clone(), bearer.clone())
        .list_providers(providers::ListProvidersRequest {
            parent: clinic.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .providers
        .len();
    let appointments_seen = AppointmentServiceClient::with_interceptor(channel, bearer)
        .list_appointments(appointments::ListAppointmentsRequest {
            parent: clinic.to_owned(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .appointments
        .len();
    (patients_seen, providers_seen, appointments_seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_demo_seed_makes_its_plan_once_and_its_accounts_sign_in() {
    let suite = TestSuite::start().await;
    let target = Target {
        gateway: suite.suite.gateway.to_string(),
        admin_email: ROOT_EMAIL.into(),
        admin_password: ROOT_PASSWORD.into(),
        progress: false,
    };
    let plan = Plan::demo();
    let first = run(&target, &plan).await.unwrap();
    assert_eq!(first.clinics.len(), plan.clinics);
    let root = suite.root_token().await;
    for clinic in &first.clinics {
        assert_eq!(
            census(&suite, &root, clinic).await,
            (plan.patients, plan.providers, plan.appointments),
            "{clinic}"
        );
    }

    // Again: the same clinics, nothing added.
    let second = run(&target, &plan).await.unwrap();
    assert_eq!(second.clinics, first.clinics);
    for clinic in &first.clinics {
        assert_eq!(
            census(&suite, &root, clinic).await,
            (plan.patients, plan.providers, plan.appointments),
            "{clinic} after a second run"
        );
    }

    // The printed sign-in details work: the clinic's ADMIN, and the portal patient.
    let mut auth = AuthServiceClient::new(suite.channel().await);
    auth.login(identity::LoginRequest {
        email: first.admin_email.clone(),
        password: SEED_PASSWORD.into(),
        device_token: String::new(),
    })
    .await
    .unwrap();
    auth.login_patient(identity::LoginPatientRequest {
        clinic: first.clinics[0].clone(),
        email: first.patient_email.clone(),
        password: SEED_PASSWORD.into(),
        device_token: String::new(),
    })
    .await
    .unwrap();
    suite.stop().await;
}
