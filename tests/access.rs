//! Identity and access, end to end: forged tokens, the role policy of every method,
//! clinic tenancy, refresh-token rotation under races, brute force, and the walk-through
//! of the README. Every test runs the whole suite on port 0 and calls it over gRPC, both
//! through the gateway and straight at the services (which must refuse the same calls).

mod support;

use std::{sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::future::join_all;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use secrecy::SecretString;
use support::{
    Bearer, ROOT_EMAIL, ROOT_PASSWORD, STAFF_PASSWORD, Setup, TestSuite, call_raw, connect,
    connect_from, mongo_store,
};
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;
use topsmile_kit::{
    auth::{AUDIENCE, Claims, ISSUER, KeyRing, Kind},
    policy::PolicyTable,
    time::TestClock,
};
use topsmile_proto::{
    FILE_DESCRIPTOR_SET,
    topsmile::{
        auth::v1::Role,
        identity::v1::{
            self as identity, auth_service_client::AuthServiceClient,
            clinic_service_client::ClinicServiceClient,
            identity_internal_service_client::IdentityInternalServiceClient,
            user_service_client::UserServiceClient,
        },
        patients::v1::{
            GetPatientRequest, GetPortalAccessRequest, VerifyPatientCredentialsRequest,
            patient_internal_service_client::PatientInternalServiceClient,
            patient_service_client::PatientServiceClient,
        },
    },
};

// ---------------------------------------------------------------------------------------
// Forged tokens

/// The suite's real signing key, as an attacker who stole nothing does not have it.
fn real_key(suite: &TestSuite) -> KeyRing {
    KeyRing::load(&suite.dir.path().join("signing-keys.json")).unwrap()
}

fn claims_for(sub: &str, role: &str, clinic: &str) -> Claims {
    let now = topsmile_kit::time::unix_seconds();
    Claims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: sub.into(),
        exp: now + 600,
        iat: now,
        jti: "forged".into(),
        clinic: clinic.into(),
        role: role.into(),
        kind: Kind::Staff,
        sid: "forged".into(),
        amr: Vec::new(),
        auth_time: 0,
        scope: String::new(),
    }
}

fn b64json(value: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

/// Every forgery the issue lists, by name.
fn forgeries(suite: &TestSuite, valid: &str) -> Vec<(&'static str, String)> {
    let ring = real_key(suite);
    let issuer = ring.issuer().unwrap();
    let kid = issuer.kid().to_owned();
    let super_admin = claims_for("clinics/-/users/forged", "super_admin", "");

    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger = KeyRing::load_or_create(&stranger_dir.path().join("k.json")).unwrap();
    let unknown_kid = stranger.issuer().unwrap().sign(&super_admin).unwrap();

    let wrong_aud = issuer
        .sign(&Claims {
            aud: "somebody-else".into(),
            ..super_admin.clone()
        })
        .unwrap();
    let wrong_iss = issuer
        .sign(&Claims {
            iss: "evil-issuer".into(),
            ..super_admin.clone()
        })
        .unwrap();
    let now = topsmile_kit::time::unix_seconds();
    let expired = issuer
        .sign(&Claims {
            exp: now - 3600,
            iat: now - 4500,
            ..super_admin.clone()
        })
        .unwrap();

    let payload = b64json(&serde_json::to_value(&super_admin).unwrap());
    let alg_none = format!(
        "{}.{payload}.",
        b64json(&serde_json::json!({"alg": "none", "kid": kid}))
    );

    // HS256 keyed with the published public key: the classic algorithm confusion.
    let public_x = ring.public_keys()[0].x.clone();
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some(kid.clone());
    let hs256_public = jsonwebtoken::encode(
        &hs_header,
        &super_admin,
        &EncodingKey::from_secret(&URL_SAFE_NO_PAD.decode(&public_x).unwrap()),
    )
    .unwrap();
    let hs256_public_text = jsonwebtoken::encode(
        &hs_header,
        &super_admin,
        &EncodingKey::from_secret(public_x.as_bytes()),
    )
    .unwrap();

    // A real token whose payload is swapped for a super admin's, signature kept.
    let parts: Vec<&str> = valid.split('.').collect();
    let tampered = format!("{}.{payload}.{}", parts[0], parts[2]);

    vec![
        ("garbage", "not-a-jwt".to_owned()),
        ("unknown kid", unknown_kid),
        ("wrong aud", wrong_aud),
        ("wrong iss", wrong_iss),
        ("expired", expired),
        ("alg none", alg_none),
        ("HS256 with the public key", hs256_public),
        ("HS256 with the public key text", hs256_public_text),
        ("tampered payload", tampered),
    ]
}

fn assert_generic_unauthenticated(what: &str, status: &Status) {
    assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    assert_eq!(
        status.message(),
        "unauthenticated",
        "{what}: one generic message for every cause"
    );
}

#[tokio::test]
async fn every_forged_token_is_unauthenticated_at_the_gateway_and_at_each_service() {
    let suite = TestSuite::start().await;
    let staff = suite.clinic_with_staff("Forgery").await;
    let clinic_name = staff.clinic.name.clone();
    let patient_name = format!("{clinic_name}/patients/p1");
    let targets = [
        ("gateway", suite.suite.gateway),
        ("identity", suite.suite.services["identity"]),
        ("patients", suite.suite.services["patients"]),
    ];
    for (where_, addr) in targets {
        let channel = connect(addr).await;
        // The genuine token passes the guard everywhere (the patient does not exist:
        // NOT_FOUND, from the handler, so past authentication).
        let mut clinics = ClinicServiceClient::with_interceptor(
            channel.clone(),
            Bearer(Some(staff.admin.clone())),
        );
        let mut patients = PatientServiceClient::with_interceptor(
            channel.clone(),
            Bearer(Some(staff.admin.clone())),
        );
        if where_ != "patients" {
            clinics
                .get_clinic(identity::GetClinicRequest {
                    name: clinic_name.clone(),
                })
                .await
                .unwrap_or_else(|e| panic!("{where_}: genuine token refused: {e:?}"));
        }
        if where_ != "identity" {
            let passed = patients
                .get_patient(GetPatientRequest {
                    name: patient_name.clone(),
                })
                .await
                .unwrap_err();
            assert_eq!(
                passed.code(),
                Code::NotFound,
                "{where_}: genuine token: {passed:?}"
            );
        }

        let mut cases = forgeries(&suite, &staff.admin);
        cases.push(("no token", String::new()));
        for (what, token) in cases {
            let bearer = Bearer((!token.is_empty()).then_some(token));
            let status = if where_ == "patients" {
                PatientServiceClient::with_interceptor(channel.clone(), bearer)
                    .get_patient(GetPatientRequest {
                        name: patient_name.clone(),
                    })
                    .await
                    .unwrap_err()
            } else {
                ClinicServiceClient::with_interceptor(channel.clone(), bearer)
                    .get_clinic(identity::GetClinicRequest {
                        name: clinic_name.clone(),
                    })
                    .await
                    .unwrap_err()
            };
            assert_generic_unauthenticated(&format!("{where_}, {what}"), &status);
        }
    }
    suite.stop().await;
}

// ---------------------------------------------------------------------------------------
// The policy of every method, and clinic tenancy

/// A request for a method of `service` that aims at clinic B's resources.
fn aimed_at(input: &MessageDescriptor, service: &str, b: &ClinicB) -> DynamicMessage {
    if service.ends_with("MfaService") {
        return support::aimed_at(input, &b.user, &b.clinic);
    }
    if service.ends_with("SessionService") {
        // A session of B's user (made up: the refusal comes before any look-up).
        let session = format!(
            "{}/sessions/{}",
            b.user,
            topsmile_kit::names::ResourceId::generate()
        );
        return support::aimed_at(input, &session, &b.user);
    }
    let own_name = if service.ends_with("UserService") {
        &b.user
    } else {
        &b.clinic
    };
    support::aimed_at(input, own_name, &b.clinic)
}

struct ClinicB {
    clinic: String,
    user: String,
}

/// Methods that act only on the caller themself: no resource to aim elsewhere.
const SELF_ONLY: &[&str] = &[
    "/topsmile.identity.v1.AuthService/Logout",
    "/topsmile.identity.v1.AuthService/ChangePassword",
    "/topsmile.identity.v1.MfaService/EnrollMfa",
    "/topsmile.identity.v1.MfaService/ConfirmMfa",
    "/topsmile.identity.v1.MfaService/DisableMfa",
    "/topsmile.identity.v1.MfaService/RegenerateRecoveryCodes",
];

#[tokio::test]
async fn every_identity_method_holds_each_role_to_its_policy_and_its_own_clinic() {
    let suite = TestSuite::start().await;
    let a = suite.clinic_with_staff("Clinic A").await;
    let b_staff = suite.clinic_with_staff("Clinic B").await;
    let b = ClinicB {
        clinic: b_staff.clinic.name.clone(),
        user: b_staff.staff_name.clone(),
    };
    // The super admin may change any clinic: it aims at a clinic of its own, so that B
    // stays as created and can be checked afterwards.
    let c_staff = suite.clinic_with_staff("Clinic C").await;
    let c = ClinicB {
        clinic: c_staff.clinic.name.clone(),
        user: c_staff.staff_name.clone(),
    };
    let root = suite.root_token().await;
    let table = PolicyTable::builtin().unwrap();
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
    let callers = [
        (Role::SuperAdmin, root.clone()),
        (Role::Admin, a.admin.clone()),
        (Role::Provider, a.provider.clone()),
        (Role::Staff, a.staff.clone()),
    ];
    let mut methods: Vec<_> = table
        .methods()
        .filter(|m| m.area == "identity")
        .filter(|m| m.policy.as_ref().is_some_and(|p| !p.public && !p.internal))
        .cloned()
        .collect();
    methods.sort_by(|x, y| x.path.cmp(&y.path));
    assert!(
        methods.len() >= 12,
        "identity's guarded methods: {}",
        methods.len()
    );
    let mut checked = 0;
    for target in [suite.suite.gateway, suite.suite.services["identity"]] {
        let channel = connect(target).await;
        for method in &methods {
            let policy = method.policy.as_ref().unwrap();
            let (_, name) = method.path.rsplit_once('/').unwrap();
            let descriptor = pool.get_service_by_name(&method.service).unwrap();
            let rpc = descriptor.methods().find(|m| m.name() == name).unwrap();
            for (role, token) in &callers {
                let aim = if *role == Role::SuperAdmin { &c } else { &b };
                let request = aimed_at(&rpc.input(), &method.service, aim);
                let code = call_raw(&channel, token, &method.path, request).await;
                let allowed = policy.roles.contains(&(*role as i32));
                let what = format!("{} as {role:?} via {target}", method.path);
                if !allowed {
                    assert_eq!(
                        code,
                        Code::PermissionDenied,
                        "{what}: the policy does not admit the role"
                    );
                } else if *role == Role::SuperAdmin || SELF_ONLY.contains(&method.path.as_str()) {
                    assert!(
                        !matches!(code, Code::PermissionDenied | Code::Unauthenticated),
                        "{what}: the policy admits the role, got {code:?}"
                    );
                } else {
                    assert!(
                        matches!(code, Code::PermissionDenied | Code::NotFound),
                        "{what}: another clinic's record must not be reachable, got {code:?}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, methods.len() * callers.len() * 2);

    // Clinic B's data is untouched: its name and its user are as created.
    let mut clinics = ClinicServiceClient::with_interceptor(
        suite.channel().await,
        Bearer(Some(b_staff.admin.clone())),
    );
    let clinic = clinics
        .get_clinic(identity::GetClinicRequest {
            name: b.clinic.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .clinic
        .unwrap();
    assert_eq!(clinic.display_name, "Clinic B");
    assert!(clinic.is_active);
    let user = UserServiceClient::with_interceptor(
        suite.channel().await,
        Bearer(Some(b_staff.admin.clone())),
    )
    .get_user(identity::GetUserRequest {
        name: b.user.clone(),
    })
    .await
    .unwrap()
    .into_inner()
    .user
    .unwrap();
    assert!(user.is_active && user.etag == "1", "{user:?}");
    suite.stop().await;
}

#[tokio::test]
async fn an_id_from_another_clinic_is_not_found_and_another_clinics_name_is_denied() {
    let suite = TestSuite::start().await;
    let a = suite.clinic_with_staff("Clinic A").await;
    let b = suite.clinic_with_staff("Clinic B").await;
    let mut users =
        UserServiceClient::with_interceptor(suite.channel().await, Bearer(Some(a.admin.clone())));
    let b_user_id = b.staff_name.rsplit('/').next().unwrap();
    let disguised = format!("{}/users/{b_user_id}", a.clinic.name);
    let err = users
        .get_user(identity::GetUserRequest { name: disguised })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = users
        .get_user(identity::GetUserRequest {
            name: b.staff_name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let missing = format!("{}/users/0000-does-not-exist", b.clinic.name);
    let err = users
        .get_user(identity::GetUserRequest { name: missing })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "existence never leaks: {err:?}"
    );
    // Its own clinic's user: fine.
    users
        .get_user(identity::GetUserRequest {
            name: a.staff_name.clone(),
        })
        .await
        .unwrap();
    suite.stop().await;
}

#[tokio::test]
async fn an_admin_cannot_make_a_super_admin_or_touch_other_clinics() {
    let suite = TestSuite::start().await;
    let a = suite.clinic_with_staff("Clinic A").await;
    let b = suite.clinic_with_staff("Clinic B").await;
    let mut users =
        UserServiceClient::with_interceptor(suite.channel().await, Bearer(Some(a.admin.clone())));
    let new_user = |parent: &str, role: identity::UserRole| identity::CreateUserRequest {
        parent: parent.to_owned(),
        user: Some(identity::User {
            email: format!("new.{}@example.com", role.as_str_name().to_lowercase()),
            display_name: "New".into(),
            role: role as i32,
            ..Default::default()
        }),
        password: STAFF_PASSWORD.into(),
        request_id: String::new(),
    };
    let err = users
        .create_user(new_user("clinics/-", identity::UserRole::SuperAdmin))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = users
        .create_user(new_user(&a.clinic.name, identity::UserRole::SuperAdmin))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = users
        .create_user(new_user(&b.clinic.name, identity::UserRole::Staff))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let created = users
        .create_user(new_user(&a.clinic.name, identity::UserRole::Staff))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert!(created.name.starts_with(&a.clinic.name));
    // Promoting within the clinic to SUPER_ADMIN is refused too.
    let err = users
        .update_user(identity::UpdateUserRequest {
            user: Some(identity::User {
                role: identity::UserRole::SuperAdmin as i32,
                ..created.clone()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["role".into()],
            }),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::PermissionDenied | Code::InvalidArgument),
        "{err:?}"
    );
    suite.stop().await;
}

// ---------------------------------------------------------------------------------------
// Refresh tokens

async fn refresh(channel: &Channel, token: &str) -> Result<identity::RefreshTokenResponse, Status> {
    AuthServiceClient::new(channel.clone())
        .refresh_token(identity::RefreshTokenRequest {
            refresh_token: token.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn racing_refreshes_have_one_winner_and_a_replay_revokes_the_family() {
    racing_refreshes(TestSuite::start().await).await;
}

#[tokio::test]
async fn racing_refreshes_have_one_winner_and_a_replay_revokes_the_family_on_mongodb() {
    if let Some(store) = mongo_store("racing_refreshes_on_mongodb") {
        racing_refreshes(TestSuite::start_on(store).await).await;
    }
}

async fn racing_refreshes(suite: TestSuite) {
    let channel = suite.channel().await;
    let session = suite.login_pair(ROOT_EMAIL, ROOT_PASSWORD).await;
    // Another session of the same user must survive the revocation of this one.
    let other_session = suite.login_pair(ROOT_EMAIL, ROOT_PASSWORD).await;

    let results = join_all((0..20).map(|_| refresh(&channel, &session.refresh_token))).await;
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "exactly one refresh wins: {results:?}");
    for loser in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_generic_unauthenticated("losing refresh", loser);
    }
    let winner = winners[0].clone();

    // The spent token again: refused, and the winner's successor dies with its family.
    let replay = refresh(&channel, &session.refresh_token).await.unwrap_err();
    assert_generic_unauthenticated("replayed refresh token", &replay);
    let successor = refresh(&channel, &winner.refresh_token).await.unwrap_err();
    assert_generic_unauthenticated("successor after replay", &successor);

    refresh(&channel, &other_session.refresh_token)
        .await
        .expect("another session is untouched");
    suite.stop().await;
}

#[tokio::test]
async fn a_refresh_rotates_and_logout_ends_the_session() {
    let suite = TestSuite::start().await;
    let channel = suite.channel().await;
    let first = suite.login_pair(ROOT_EMAIL, ROOT_PASSWORD).await;
    let second = refresh(&channel, &first.refresh_token).await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(second.expires_in, 900);
    // The new access token works.
    ClinicServiceClient::with_interceptor(
        channel.clone(),
        Bearer(Some(second.access_token.clone())),
    )
    .list_clinics(identity::ListClinicsRequest::default())
    .await
    .unwrap();
    AuthServiceClient::with_interceptor(channel.clone(), Bearer(Some(second.access_token.clone())))
        .logout(identity::LogoutRequest {
            refresh_token: second.refresh_token.clone(),
        })
        .await
        .unwrap();
    let err = refresh(&channel, &second.refresh_token).await.unwrap_err();
    assert_generic_unauthenticated("refresh after logout", &err);
    suite.stop().await;
}

#[tokio::test]
async fn an_expired_refresh_token_is_rejected() {
    expired_refresh(None).await;
}

#[tokio::test]
async fn an_expired_refresh_token_is_rejected_on_mongodb() {
    if let Some(store) = mongo_store("expired_refresh_on_mongodb") {
        expired_refresh(Some(store)).await;
    }
}

/// A suite whose lock and refresh-token expiry run on a clock the test moves.
async fn on_test_clock(
    store: Option<topsmile_kit::store::StoreChoice>,
) -> (TestSuite, Arc<TestClock>) {
    let clock = Arc::new(TestClock::new(topsmile_kit::time::now()));
    let suite = TestSuite::with(Setup {
        store,
        clock: Some(clock.clone()),
        ..Setup::default()
    })
    .await;
    (suite, clock)
}

async fn expired_refresh(store: Option<topsmile_kit::store::StoreChoice>) {
    let (suite, clock) = on_test_clock(store).await;
    let channel = suite.channel().await;
    let session = suite.login_pair(ROOT_EMAIL, ROOT_PASSWORD).await;
    clock.advance(Duration::from_secs(7 * 24 * 3600 + 1));
    let err = refresh(&channel, &session.refresh_token).await.unwrap_err();
    assert_generic_unauthenticated("expired refresh token", &err);
    suite.stop().await;
}

#[tokio::test]
async fn changing_the_password_ends_the_other_sessions_and_deactivating_a_user_every_one() {
    let suite = TestSuite::start().await;
    let channel = suite.channel().await;
    let a = suite.clinic_with_staff("Sessions").await;
    let email = {
        let mut users =
            UserServiceClient::with_interceptor(channel.clone(), Bearer(Some(a.admin.clone())));
        users
            .get_user(identity::GetUserRequest {
                name: a.staff_name.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap()
            .email
    };
    let elsewhere = suite.login_pair(&email, STAFF_PASSWORD).await;
    let session = suite.login_pair(&email, STAFF_PASSWORD).await;
    let mut auth = AuthServiceClient::with_interceptor(
        channel.clone(),
        Bearer(Some(session.access_token.clone())),
    );
    let wrong = auth
        .change_password(identity::ChangePasswordRequest {
            current_password: "not the password at all".into(),
            new_password: "a brand new password".into(),
        })
        .await
        .unwrap_err();
    assert_generic_unauthenticated("wrong current password", &wrong);
    let short = auth
        .change_password(identity::ChangePasswordRequest {
            current_password: STAFF_PASSWORD.into(),
            new_password: "short".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(short.code(), Code::InvalidArgument);
    let fields = support::violations(&short);
    assert_eq!(fields, vec!["new_password".to_owned()]);
    auth.change_password(identity::ChangePasswordRequest {
        current_password: STAFF_PASSWORD.into(),
        new_password: "a brand new password".into(),
    })
    .await
    .unwrap();
    assert_generic_unauthenticated(
        "another session's refresh after the password change",
        &refresh(&channel, &elsewhere.refresh_token)
            .await
            .unwrap_err(),
    );
    refresh(&channel, &session.refresh_token)
        .await
        .expect("the session that changed the password goes on");
    let err = AuthServiceClient::new(channel.clone())
        .login(identity::LoginRequest {
            email: email.clone(),
            password: STAFF_PASSWORD.into(),
            device_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_generic_unauthenticated("old password", &err);

    let session = suite.login_pair(&email, "a brand new password").await;
    let mut users =
        UserServiceClient::with_interceptor(channel.clone(), Bearer(Some(a.admin.clone())));
    let user = users
        .deactivate_user(identity::DeactivateUserRequest {
            name: a.staff_name.clone(),
            etag: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert!(!user.is_active);
    assert_generic_unauthenticated(
        "refresh after deactivation",
        &refresh(&channel, &session.refresh_token).await.unwrap_err(),
    );
    let err = AuthServiceClient::new(channel.clone())
        .login(identity::LoginRequest {
            email,
            password: "a brand new password".into(),
            device_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_generic_unauthenticated("deactivated user", &err);
    suite.stop().await;
}

// ---------------------------------------------------------------------------------------
// Brute force

#[tokio::test]
async fn a_password_guessing_burst_is_locked_out_after_a_few_checks() {
    guessing_burst(None).await;
}

#[tokio::test]
async fn a_password_guessing_burst_is_locked_out_after_a_few_checks_on_mongodb() {
    if let Some(store) = mongo_store("guessing_burst_on_mongodb") {
        guessing_burst(Some(store)).await;
    }
}

async fn guessing_burst(store: Option<topsmile_kit::store::StoreChoice>) {
    let (suite, clock) = on_test_clock(store).await;
    let channel = suite.channel().await;
    let before = suite.suite.accounts.passwords.guesses_checked();
    let guesses = (0..50).map(|i| {
        let channel = channel.clone();
        async move {
            AuthServiceClient::new(channel)
                .login(identity::LoginRequest {
                    email: ROOT_EMAIL.into(),
                    password: format!("wrong guess number {i}"),
                    device_token: String::new(),
                })
                .await
        }
    });
    for result in join_all(guesses).await {
        assert_generic_unauthenticated("wrong password", &result.unwrap_err());
    }
    let checked = suite.suite.accounts.passwords.guesses_checked() - before;
    assert!(
        checked <= 5,
        "{checked} guesses checked against the real password for 50 attempts"
    );
    assert!(checked >= 1, "the first guesses are checked");

    // Locked: the right password is refused too, with the same answer, after the same
    // work as any other sign-in (one hash, against the dummy), so a locked account
    // cannot be told from an unknown one by timing.
    let hashes_before = suite.suite.accounts.passwords.verifications();
    let locked = AuthServiceClient::new(channel.clone())
        .login(identity::LoginRequest {
            email: ROOT_EMAIL.into(),
            password: ROOT_PASSWORD.into(),
            device_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_generic_unauthenticated("locked account", &locked);
    assert_eq!(
        suite.suite.accounts.passwords.verifications() - hashes_before,
        1,
        "a locked account costs one hash, like an unknown one"
    );

    // Once the lock has run out, the right password works again.
    clock.advance(Duration::from_secs(15 * 60 + 1));
    suite.login(ROOT_EMAIL, ROOT_PASSWORD).await;
    suite.stop().await;
}

/// A staff user of a fresh clinic with a known email; its name, and an admin's token.
async fn a_user_to_lock(suite: &TestSuite, email: &str) -> (String, String) {
    let a = suite.clinic_with_staff("Lockout").await;
    let user =
        UserServiceClient::with_interceptor(suite.channel().await, Bearer(Some(a.admin.clone())))
            .create_user(identity::CreateUserRequest {
                parent: a.clinic.name.clone(),
                user: Some(identity::User {
                    email: email.into(),
                    display_name: "Dr. Locked Out".into(),
                    role: identity::UserRole::Provider as i32,
                    ..Default::default()
                }),
                password: STAFF_PASSWORD.into(),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap();
    (user.name, a.admin)
}

async fn login_from(
    suite: &TestSuite,
    from: [u8; 4],
    email: &str,
    password: &str,
) -> Result<identity::LoginResponse, Status> {
    let channel = connect_from(suite.suite.gateway, std::net::IpAddr::from(from)).await;
    AuthServiceClient::new(channel)
        .login(identity::LoginRequest {
            email: email.into(),
            password: password.into(),
            device_token: String::new(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn guessing_locks_out_the_guesser_not_the_owner(
    store: Option<topsmile_kit::store::StoreChoice>,
) {
    let (suite, _clock) = on_test_clock(store).await;
    let email = "dr.locked@example.com";
    let (user, admin) = a_user_to_lock(&suite, email).await;
    // An attacker at 127.0.0.2 guesses until locked: even the right password is then
    // refused from there ...
    for i in 0..8 {
        let err = login_from(
            &suite,
            [127, 0, 0, 2],
            email,
            &format!("guess number {i} here"),
        )
        .await
        .unwrap_err();
        assert_generic_unauthenticated("guess", &err);
    }
    let err = login_from(&suite, [127, 0, 0, 2], email, STAFF_PASSWORD)
        .await
        .unwrap_err();
    assert_generic_unauthenticated("locked for the guesser", &err);
    // ... while the owner, at 127.0.0.3, signs in.
    login_from(&suite, [127, 0, 0, 3], email, STAFF_PASSWORD)
        .await
        .unwrap();

    // Guessing from many addresses meets the account-wide bound (50 failures): then
    // nobody signs in for a while, from anywhere ...
    for host in 10..21u8 {
        for i in 0..5 {
            let _ = login_from(
                &suite,
                [127, 0, 0, host],
                email,
                &format!("spread guess {i} here"),
            )
            .await
            .unwrap_err();
        }
    }
    let err = login_from(&suite, [127, 0, 0, 99], email, STAFF_PASSWORD)
        .await
        .unwrap_err();
    assert_generic_unauthenticated("locked account-wide", &err);
    // ... until an admin lifts the locks.
    UserServiceClient::with_interceptor(suite.channel().await, Bearer(Some(admin.clone())))
        .unlock_user(identity::UnlockUserRequest { name: user.clone() })
        .await
        .unwrap();
    login_from(&suite, [127, 0, 0, 99], email, STAFF_PASSWORD)
        .await
        .unwrap();
    login_from(&suite, [127, 0, 0, 2], email, STAFF_PASSWORD)
        .await
        .unwrap();
    // Another clinic's admin may not unlock (or learn about) this user.
    let other = suite.clinic_with_staff("Other Lockout").await;
    let refused =
        UserServiceClient::with_interceptor(suite.channel().await, Bearer(Some(other.admin)))
            .unlock_user(identity::UnlockUserRequest { name: user })
            .await
            .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    suite.stop().await;
}

#[tokio::test]
async fn guessing_locks_out_the_guesser_and_not_the_owner_elsewhere() {
    guessing_locks_out_the_guesser_not_the_owner(None).await;
}

#[tokio::test]
async fn guessing_locks_out_the_guesser_and_not_the_owner_elsewhere_on_mongodb() {
    if let Some(store) = mongo_store("lockout_per_address_on_mongodb") {
        guessing_locks_out_the_guesser_not_the_owner(Some(store)).await;
    }
}

#[tokio::test]
async fn an_unknown_email_costs_a_hash_and_answers_like_a_wrong_password() {
    let suite = TestSuite::start().await;
    let channel = suite.channel().await;
    let before = suite.suite.accounts.passwords.verifications();
    let unknown = AuthServiceClient::new(channel.clone())
        .login(identity::LoginRequest {
            email: "nobody@example.com".into(),
            password: ROOT_PASSWORD.into(),
            device_token: String::new(),
        })
        .await
        .unwrap_err();
    let wrong = AuthServiceClient::new(channel)
        .login(identity::LoginRequest {
            email: ROOT_EMAIL.into(),
            password: "wrong but long enough".into(),
            device_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        suite.suite.accounts.passwords.verifications() - before,
        2,
        "both ran a password check"
    );
    assert_generic_unauthenticated("unknown email", &unknown);
    assert_generic_unauthenticated("wrong password", &wrong);
    suite.stop().await;
}

#[tokio::test]
async fn the_gateway_rate_limits_sign_in_per_client_address() {
    let suite = TestSuite::with(Setup {
        sign_in_per_minute: 3,
        ..Setup::default()
    })
    .await;
    let mut auth = AuthServiceClient::new(suite.channel().await);
    let mut exhausted = None;
    for _ in 0..30 {
        let result = auth
            .login(identity::LoginRequest {
                email: "nobody@example.com".into(),
                password: "x".repeat(12),
                device_token: String::new(),
            })
            .await;
        if let Err(status) = result
            && status.code() == Code::ResourceExhausted
        {
            exhausted = Some(status);
            break;
        }
    }
    let status = exhausted.expect("a burst of sign-ins from one address is throttled");
    let retry = status
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay);
    assert!(
        retry.is_some_and(|d| d > Duration::ZERO),
        "RetryInfo says when: {status:?}"
    );
    // Other calls are not throttled.
    ClinicServiceClient::with_interceptor(suite.channel().await, Bearer(Some(String::from("x"))))
        .list_clinics(identity::ListClinicsRequest::default())
        .await
        .map(|_| ())
        .or_else(|s| {
            if s.code() == Code::Unauthenticated {
                Ok(())
            } else {
                Err(s)
            }
        })
        .unwrap();
    suite.stop().await;
}

// ---------------------------------------------------------------------------------------
// Service tokens and keys

#[tokio::test]
async fn internal_methods_take_service_tokens_only_and_the_edge_hides_them() {
    let suite = TestSuite::start().await;
    let a = suite.clinic_with_staff("Internal").await;
    let root = suite.root_token().await;
    let patients = connect(suite.suite.services["patients"]).await;
    let request = || VerifyPatientCredentialsRequest {
        clinic: a.clinic.name.clone(),
        email: "p@example.com".into(),
        password: "whatever it is".into(),
        ..Default::default()
    };
    let access = || GetPortalAccessRequest {
        name: format!("{}/patients/p1", a.clinic.name),
        ..Default::default()
    };
    for (who, token) in [("super admin", &root), ("admin", &a.admin)] {
        let mut client = PatientInternalServiceClient::with_interceptor(
            patients.clone(),
            Bearer(Some(token.clone())),
        );
        let err = client
            .verify_patient_credentials(request())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{who}: {err:?}");
        let err = client.get_portal_access(access()).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{who}: {err:?}");
    }

    // A service token from identity's internal method, with the shared secret. The
    // suite's secret is random; a wrong one is refused.
    let identity = connect(suite.suite.services["identity"]).await;
    let err = IdentityInternalServiceClient::new(identity.clone())
        .mint_service_token(identity::MintServiceTokenRequest {
            service: "patients".into(),
            service_secret: "guess".into(),
        })
        .await
        .unwrap_err();
    assert_generic_unauthenticated("wrong service secret", &err);
    let (token, _) = suite
        .suite
        .accounts
        .mint_service_token("appointments", &suite_secret(&suite))
        .await
        .unwrap();
    let passed =
        PatientInternalServiceClient::with_interceptor(patients, Bearer(Some(token.clone())))
            .get_portal_access(access())
            .await
            .expect("the service token passes the guard")
            .into_inner();
    assert!(!passed.allowed, "no such patient");

    // Through the gateway, internal methods do not exist, whatever the token.
    let err =
        PatientInternalServiceClient::with_interceptor(suite.channel().await, Bearer(Some(token)))
            .verify_patient_credentials(request())
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    suite.stop().await;
}

fn suite_secret(suite: &TestSuite) -> SecretString {
    suite
        .suite
        .accounts
        .service_secret
        .clone()
        .expect("the suite sets a service secret")
}

#[tokio::test]
async fn a_key_rotation_takes_effect_without_a_restart_and_old_tokens_keep_working() {
    let suite = TestSuite::start().await;
    let a = suite.clinic_with_staff("Rotation").await;
    let old = suite.root_token().await;
    let key_file = suite.dir.path().join("signing-keys.json");
    let old_kid = KeyRing::load(&key_file)
        .unwrap()
        .issuer()
        .unwrap()
        .kid()
        .to_owned();
    // The new key is published at once and signs after a hand-over longer than the
    // verifiers' shortest interval between key fetches.
    let hand_over = topsmile_kit::access::REFRESH_INTERVAL + Duration::from_secs(1);
    let new_kid = KeyRing::rotate_after(&key_file, hand_over).unwrap();
    assert_ne!(old_kid, new_kid);
    let during = suite.root_token().await;
    let header = jsonwebtoken::decode_header(&during).unwrap();
    assert_eq!(
        header.kid.as_deref(),
        Some(old_kid.as_str()),
        "the old key signs until the hand-over"
    );
    tokio::time::sleep(hand_over + Duration::from_millis(1100)).await;

    let new = suite.root_token().await;
    let header = jsonwebtoken::decode_header(&new).unwrap();
    assert_eq!(header.kid.as_deref(), Some(new_kid.as_str()));

    let jwks = AuthServiceClient::new(suite.channel().await)
        .get_jwks(identity::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    let kids: Vec<_> = jwks.keys.iter().map(|k| k.kid.as_str()).collect();
    assert!(
        kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()),
        "{kids:?}"
    );
    assert!(
        jwks.keys
            .iter()
            .all(|k| k.kty == "OKP" && k.crv == "Ed25519" && k.alg == "EdDSA")
    );

    // Both tokens work at the gateway and at a service that learns the new key on demand.
    for addr in [suite.suite.gateway, suite.suite.services["patients"]] {
        for token in [&old, &new] {
            let err = PatientServiceClient::with_interceptor(
                connect(addr).await,
                Bearer(Some(token.clone())),
            )
            .get_patient(GetPatientRequest {
                name: format!("{}/patients/p1", a.clinic.name),
            })
            .await
            .unwrap_err();
            assert_eq!(
                err.code(),
                Code::NotFound,
                "past the guard: {addr}: {err:?}"
            );
        }
    }
    suite.stop().await;
}

// ---------------------------------------------------------------------------------------
// The README walk-through

#[tokio::test]
async fn the_walkthrough_steps_behave_as_the_readme_says() {
    // The same steps as README.md "Try it with grpcurl", with typed clients.
    let suite = TestSuite::start().await;
    let channel = suite.channel().await;
    // 1. Sign in as the super admin.
    let root = suite.root_token().await;
    // 2. Create a clinic.
    let clinic = ClinicServiceClient::with_interceptor(channel.clone(), Bearer(Some(root.clone())))
        .create_clinic(identity::CreateClinicRequest {
            clinic: Some(identity::Clinic {
                display_name: "Sorriso Centro".into(),
                time_zone: "America/Sao_Paulo".into(),
                ..Default::default()
            }),
            request_id: "readme-walkthrough".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .clinic
        .unwrap();
    // 3. Create its admin.
    let admin = UserServiceClient::with_interceptor(channel.clone(), Bearer(Some(root)))
        .create_user(identity::CreateUserRequest {
            parent: clinic.name.clone(),
            user: Some(identity::User {
                email: "ana@sorriso.example".into(),
                display_name: "Ana Admin".into(),
                role: identity::UserRole::Admin as i32,
                ..Default::default()
            }),
            password: "ana's long password".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert!(admin.name.starts_with(&format!("{}/users/", clinic.name)));
    // 4. Sign in as that admin and read the clinic.
    let ana = suite
        .login("ana@sorriso.example", "ana's long password")
        .await;
    let mut clinics = ClinicServiceClient::with_interceptor(channel.clone(), Bearer(Some(ana)));
    let got = clinics
        .get_clinic(identity::GetClinicRequest {
            name: clinic.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .clinic
        .unwrap();
    assert_eq!(got.display_name, "Sorriso Centro");
    // 5. The admin may not list every clinic: that is for super admins.
    let err = clinics
        .list_clinics(identity::ListClinicsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    suite.stop().await;
}

#[tokio::test]
async fn the_bootstrap_admin_is_created_once_and_never_overwritten() {
    let suite = TestSuite::start().await;
    let accounts = &suite.suite.accounts;
    // A restart with other settings (here: another password, then another email).
    let other = SecretString::from("a completely different password");
    assert!(!accounts.bootstrap_admin(ROOT_EMAIL, &other).await.unwrap());
    assert!(
        !accounts
            .bootstrap_admin("second@topsmile.test", &other)
            .await
            .unwrap(),
        "a super admin exists: no second bootstrap account"
    );
    suite.login(ROOT_EMAIL, ROOT_PASSWORD).await;
    let err = AuthServiceClient::new(suite.channel().await)
        .login(identity::LoginRequest {
            email: "second@topsmile.test".into(),
            password: "a completely different password".into(),
            device_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_generic_unauthenticated("no second bootstrap account", &err);
    suite.stop().await;
}

// ---------------------------------------------------------------------------------------
// Revocation: every call is judged by its session and principal as they are now

/// How long a change may take to reach every guard (the README's promise).
const REVOCATION_BOUND: Duration = Duration::from_secs(5);

/// Where a token is tried: the gateway, and each replica of identity and of patients
/// straight (two of each in these tests).
struct Doors {
    gateway: Channel,
    identity: Vec<Channel>,
    patients: Vec<Channel>,
}

impl Doors {
    async fn of(suite: &TestSuite) -> Self {
        let mut identity = Vec::new();
        for replica in &suite.suite.replicas["identity"] {
            identity.push(connect(replica.addr).await);
        }
        let mut patients = Vec::new();
        for replica in &suite.suite.replicas["patients"] {
            patients.push(connect(replica.addr).await);
        }
        assert!(
            identity.len() >= 2 && patients.len() >= 2,
            "two replicas of each"
        );
        Self {
            gateway: suite.channel().await,
            identity,
            patients,
        }
    }

    /// (where, code) of one identity call and one patients call at every door, as
    /// `what` makes them.
    async fn try_all(&self, what: &Probe<'_>) -> Vec<(String, Code)> {
        let mut codes = Vec::new();
        for (i, channel) in self.identity.iter().enumerate() {
            codes.push((
                format!("identity replica {i}"),
                what.identity(channel).await,
            ));
        }
        for (i, channel) in self.patients.iter().enumerate() {
            codes.push((
                format!("patients replica {i}"),
                what.patients(channel).await,
            ));
        }
        codes.push((
            "gateway (identity)".into(),
            what.identity(&self.gateway).await,
        ));
        codes.push((
            "gateway (patients)".into(),
            what.patients(&self.gateway).await,
        ));
        codes
    }

    /// Waits until every door answers `expected`, failing past the bound.
    async fn until_every_door_says(&self, what: &Probe<'_>, expected: Code, case: &str) {
        until_all_say(expected, case, || self.try_all(what)).await;
    }

    async fn every_door_says(&self, what: &Probe<'_>, expected: Code, case: &str) {
        let codes = self.try_all(what).await;
        assert!(
            codes.iter().all(|(_, code)| *code == expected),
            "{case}: {codes:?}"
        );
    }
}

/// The code of a bare `List` call with `token` straight at every replica of providers
/// and appointments (an empty request: INVALID_ARGUMENT once the token passes).
async fn other_services_say(suite: &TestSuite, token: &str) -> Vec<(String, Code)> {
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
    let mut codes = Vec::new();
    for (area, service, method) in [
        (
            "providers",
            "topsmile.providers.v1.ProviderService",
            "ListProviders",
        ),
        (
            "appointments",
            "topsmile.appointments.v1.AppointmentService",
            "ListAppointments",
        ),
    ] {
        let method = pool
            .get_service_by_name(service)
            .unwrap()
            .methods()
            .find(|m| m.name() == method)
            .unwrap();
        let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
        for (i, replica) in suite.suite.replicas[area].iter().enumerate() {
            let request = DynamicMessage::new(method.input());
            let code = call_raw(&connect(replica.addr).await, token, &path, request).await;
            codes.push((format!("{area} replica {i}"), code));
        }
    }
    codes
}

/// Asks `codes` again every 100 ms until every (where, code) it answers is `expected`,
/// failing past [`REVOCATION_BOUND`].
async fn until_all_say<F, Fut>(expected: Code, case: &str, mut codes: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Vec<(String, Code)>>,
{
    let changed = std::time::Instant::now();
    loop {
        let answered = codes().await;
        if answered.iter().all(|(_, code)| *code == expected) {
            return;
        }
        assert!(
            changed.elapsed() <= REVOCATION_BOUND,
            "{case}: not {expected:?} everywhere within {REVOCATION_BOUND:?}: {answered:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A pair of calls a token makes: one answered by identity, one by patients.
enum Probe<'a> {
    /// Reads any staff role may make: the clinic, and its patients.
    StaffReads { token: &'a str, clinic: &'a str },
    /// What only an ADMIN may do: create an ADMIN, read the audit trail.
    AdminOnly { token: &'a str, clinic: &'a str },
    /// A portal patient reads their own record (patients) and clinic (identity).
    PatientReads {
        token: &'a str,
        clinic: &'a str,
        patient: &'a str,
    },
}

impl Probe<'_> {
    fn token(&self) -> &str {
        match self {
            Self::StaffReads { token, .. }
            | Self::AdminOnly { token, .. }
            | Self::PatientReads { token, .. } => token,
        }
    }

    async fn identity(&self, channel: &Channel) -> Code {
        let bearer = Bearer(Some(self.token().to_owned()));
        let result = match self {
            Self::StaffReads { clinic, .. } | Self::PatientReads { clinic, .. } => {
                ClinicServiceClient::with_interceptor(channel.clone(), bearer)
                    .get_clinic(identity::GetClinicRequest {
                        name: (*clinic).into(),
                    })
                    .await
                    .map(|_| ())
            }
            Self::AdminOnly { clinic, .. } => {
                // An invalid user: an ADMIN gets INVALID_ARGUMENT, and nothing is made.
                UserServiceClient::with_interceptor(channel.clone(), bearer)
                    .create_user(identity::CreateUserRequest {
                        parent: (*clinic).into(),
                        user: Some(identity::User {
                            email: "not an email".into(),
                            role: identity::UserRole::Admin as i32,
                            ..Default::default()
                        }),
                        password: "x".into(),
                        request_id: String::new(),
                    })
                    .await
                    .map(|_| ())
            }
        };
        result.map_or_else(|s| s.code(), |()| Code::Ok)
    }

    async fn patients(&self, channel: &Channel) -> Code {
        use topsmile_proto::topsmile::patients::v1 as pb;
        let bearer = Bearer(Some(self.token().to_owned()));
        let result = match self {
            Self::StaffReads { clinic, .. } => {
                PatientServiceClient::with_interceptor(channel.clone(), bearer)
                    .list_patients(pb::ListPatientsRequest {
                        parent: (*clinic).into(),
                        page_size: 1,
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
            }
            Self::AdminOnly { clinic, .. } => {
                pb::audit_service_client::AuditServiceClient::with_interceptor(
                    channel.clone(),
                    bearer,
                )
                .list_audit_events(pb::ListAuditEventsRequest {
                    parent: (*clinic).into(),
                    page_size: 1,
                    ..Default::default()
                })
                .await
                .map(|_| ())
            }
            Self::PatientReads { patient, .. } => {
                PatientServiceClient::with_interceptor(channel.clone(), bearer)
                    .get_patient(GetPatientRequest {
                        name: (*patient).into(),
                    })
                    .await
                    .map(|_| ())
            }
        };
        result.map_or_else(|s| s.code(), |()| Code::Ok)
    }
}

/// A second ADMIN of `staff`'s clinic, signed in: (name, email, access token).
async fn another_admin(
    suite: &TestSuite,
    staff: &support::ClinicStaff,
) -> (String, String, String) {
    let email = format!(
        "second.admin.{}@example.com",
        topsmile_kit::names::ResourceId::generate()
    );
    let user = UserServiceClient::with_interceptor(
        suite.channel().await,
        Bearer(Some(staff.admin.clone())),
    )
    .create_user(identity::CreateUserRequest {
        parent: staff.clinic.name.clone(),
        user: Some(identity::User {
            email: email.clone(),
            display_name: "Second Admin".into(),
            role: identity::UserRole::Admin as i32,
            ..Default::default()
        }),
        password: STAFF_PASSWORD.into(),
        request_id: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .user
    .unwrap();
    let token = suite.login(&email, STAFF_PASSWORD).await;
    (user.name, email, token)
}

#[tokio::test]
async fn access_ends_within_seconds_everywhere_on_two_replicas() {
    revocation(None).await;
}

#[tokio::test]
async fn access_ends_within_seconds_everywhere_on_two_replicas_on_mongodb() {
    if let Some(store) =
        mongo_store("access_ends_within_seconds_everywhere_on_two_replicas_on_mongodb")
    {
        revocation(Some(store)).await;
    }
}

/// Deactivation, demotion, a password change elsewhere, a sign-out and a patient's
/// deactivation, each seen by the gateway and by both replicas of identity and of
/// patients within the bound; and what is not changed keeps working.
async fn revocation(store: Option<topsmile_kit::store::StoreChoice>) {
    let suite = TestSuite::with(Setup {
        store,
        replicas: 2,
        ..Setup::default()
    })
    .await;
    let a = suite.clinic_with_staff("Revocation").await;
    let clinic = a.clinic.name.as_str();
    let doors = Doors::of(&suite).await;
    let mut users =
        UserServiceClient::with_interceptor(suite.channel().await, Bearer(Some(a.admin.clone())));

    // A deactivated ADMIN's token stops everywhere.
    let (name, _, token) = another_admin(&suite, &a).await;
    let reads = Probe::StaffReads {
        token: &token,
        clinic,
    };
    doors
        .every_door_says(&reads, Code::Ok, "before deactivation")
        .await;
    let before = other_services_say(&suite, &token).await;
    assert!(
        before.iter().all(|(_, c)| *c == Code::InvalidArgument),
        "{before:?}"
    );
    users
        .deactivate_user(identity::DeactivateUserRequest {
            name,
            etag: String::new(),
        })
        .await
        .unwrap();
    doors
        .until_every_door_says(&reads, Code::Unauthenticated, "deactivated admin")
        .await;
    until_all_say(
        Code::Unauthenticated,
        "straight at providers and appointments",
        || other_services_say(&suite, &token),
    )
    .await;

    // A demoted ADMIN is judged as STAFF: admin-only calls are denied, reads go on.
    let (name, _, token) = another_admin(&suite, &a).await;
    let admin_only = Probe::AdminOnly {
        token: &token,
        clinic,
    };
    let codes = doors.try_all(&admin_only).await;
    assert!(
        codes
            .iter()
            .all(|(_, c)| matches!(c, Code::InvalidArgument | Code::Ok)),
        "an ADMIN may, before the demotion: {codes:?}"
    );
    users
        .update_user(identity::UpdateUserRequest {
            user: Some(identity::User {
                name,
                role: identity::UserRole::Staff as i32,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["role".into()],
            }),
        })
        .await
        .unwrap();
    doors
        .until_every_door_says(&admin_only, Code::PermissionDenied, "demoted admin")
        .await;
    doors
        .every_door_says(
            &Probe::StaffReads {
                token: &token,
                clinic,
            },
            Code::Ok,
            "demoted, still staff",
        )
        .await;

    // A password change ends the other sessions, not the one that changed it.
    let email = users
        .get_user(identity::GetUserRequest {
            name: a.staff_name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap()
        .email;
    let elsewhere = suite.login(&email, STAFF_PASSWORD).await;
    let here = suite.login(&email, STAFF_PASSWORD).await;
    doors
        .every_door_says(
            &Probe::StaffReads {
                token: &elsewhere,
                clinic,
            },
            Code::Ok,
            "before the change",
        )
        .await;
    AuthServiceClient::with_interceptor(suite.channel().await, Bearer(Some(here.clone())))
        .change_password(identity::ChangePasswordRequest {
            current_password: STAFF_PASSWORD.into(),
            new_password: "a brand new password".into(),
        })
        .await
        .unwrap();
    doors
        .until_every_door_says(
            &Probe::StaffReads {
                token: &elsewhere,
                clinic,
            },
            Code::Unauthenticated,
            "the other session after a password change",
        )
        .await;
    doors
        .every_door_says(
            &Probe::StaffReads {
                token: &here,
                clinic,
            },
            Code::Ok,
            "the changing session",
        )
        .await;

    // Signing out ends that session's access tokens too.
    AuthServiceClient::with_interceptor(suite.channel().await, Bearer(Some(here.clone())))
        .logout(identity::LogoutRequest::default())
        .await
        .unwrap();
    doors
        .until_every_door_says(
            &Probe::StaffReads {
                token: &here,
                clinic,
            },
            Code::Unauthenticated,
            "signed out",
        )
        .await;

    // A deactivated patient's portal token stops.
    let (patient, portal) = support::a_patient(&suite, &a, "Revoked").await;
    let own = Probe::PatientReads {
        token: &portal,
        clinic,
        patient: &patient,
    };
    doors
        .every_door_says(&own, Code::Ok, "the patient before")
        .await;
    PatientServiceClient::with_interceptor(suite.channel().await, Bearer(Some(a.admin.clone())))
        .deactivate_patient(
            topsmile_proto::topsmile::patients::v1::DeactivatePatientRequest {
                name: patient.clone(),
                etag: String::new(),
            },
        )
        .await
        .unwrap();
    doors
        .until_every_door_says(&own, Code::Unauthenticated, "deactivated patient")
        .await;

    // A deactivated clinic's staff stop too; the super admin still reads it.
    doors
        .every_door_says(
            &Probe::StaffReads {
                token: &a.provider,
                clinic,
            },
            Code::Ok,
            "clinic open",
        )
        .await;
    ClinicServiceClient::with_interceptor(
        suite.channel().await,
        Bearer(Some(suite.root_token().await)),
    )
    .deactivate_clinic(identity::DeactivateClinicRequest {
        name: clinic.into(),
        etag: String::new(),
    })
    .await
    .unwrap();
    doors
        .until_every_door_says(
            &Probe::StaffReads {
                token: &a.provider,
                clinic,
            },
            Code::Unauthenticated,
            "a deactivated clinic's staff",
        )
        .await;
    let root = suite.root_token().await;
    doors
        .every_door_says(
            &Probe::StaffReads {
                token: &root,
                clinic,
            },
            Code::Ok,
            "the super admin",
        )
        .await;
    suite.stop().await;
}

// ---------------------------------------------------------------------------------------
// Sessions: seen and ended by their owner, their clinic's ADMIN, a super admin

/// A channel to the gateway whose calls say they come from `label` (user agent).
async fn labelled(suite: &TestSuite, label: &str) -> Channel {
    Channel::from_shared(format!("http://{}", suite.suite.gateway))
        .unwrap()
        .user_agent(label)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn sign_in_as(channel: &Channel, email: &str, password: &str) -> identity::LoginResponse {
    AuthServiceClient::new(channel.clone())
        .login(identity::LoginRequest {
            email: email.into(),
            password: password.into(),
            device_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn sessions_of(
    suite: &TestSuite,
    token: &str,
    parent: &str,
) -> Result<Vec<identity::Session>, Status> {
    identity::session_service_client::SessionServiceClient::with_interceptor(
        suite.channel().await,
        Bearer(Some(token.to_owned())),
    )
    .list_sessions(identity::ListSessionsRequest {
        parent: parent.into(),
    })
    .await
    .map(|r| r.into_inner().sessions)
}

async fn revoke(suite: &TestSuite, token: &str, name: &str) -> Result<(), Status> {
    identity::session_service_client::SessionServiceClient::with_interceptor(
        suite.channel().await,
        Bearer(Some(token.to_owned())),
    )
    .revoke_session(identity::RevokeSessionRequest { name: name.into() })
    .await
    .map(|_| ())
}

#[tokio::test]
async fn sessions_are_listed_and_ended_by_their_owner_their_admin_and_nobody_else() {
    sessions_listed_and_ended(None).await;
}

#[tokio::test]
async fn sessions_are_listed_and_ended_by_their_owner_their_admin_and_nobody_else_on_mongodb() {
    if let Some(store) = mongo_store("sessions_are_listed_and_ended_on_mongodb") {
        sessions_listed_and_ended(Some(store)).await;
    }
}

async fn sessions_listed_and_ended(store: Option<topsmile_kit::store::StoreChoice>) {
    let suite = TestSuite::with(Setup {
        store,
        ..Setup::default()
    })
    .await;
    let a = suite.clinic_with_staff("Session List").await;
    let b = suite.clinic_with_staff("Session Other").await;
    let clinic = a.clinic.name.as_str();
    let mut users =
        UserServiceClient::with_interceptor(suite.channel().await, Bearer(Some(a.admin.clone())));
    let email = users
        .get_user(identity::GetUserRequest {
            name: a.staff_name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap()
        .email;
    let phone = sign_in_as(
        &labelled(&suite, "TopSmile Phone/2.1").await,
        &email,
        STAFF_PASSWORD,
    )
    .await;
    let desk = sign_in_as(
        &labelled(&suite, "Front Desk PC").await,
        &email,
        STAFF_PASSWORD,
    )
    .await;

    // The owner sees every live session, newest first, its own marked.
    let mine = sessions_of(&suite, &desk.access_token, &a.staff_name)
        .await
        .unwrap();
    assert_eq!(
        mine.len(),
        3,
        "the set-up's sign-in, the phone, the desk: {mine:?}"
    );
    assert!(
        mine[0].client_label.starts_with("Front Desk PC"),
        "{mine:?}"
    );
    assert!(
        mine[1].client_label.starts_with("TopSmile Phone/2.1"),
        "{mine:?}"
    );
    assert_eq!(
        mine.iter().map(|s| s.current).collect::<Vec<_>>(),
        [true, false, false]
    );
    for s in &mine {
        assert!(
            s.name.starts_with(&format!("{}/sessions/", a.staff_name)),
            "{s:?}"
        );
        assert_eq!(s.client_address, "127.0.0.1");
        let (created, used, expires) = (
            s.create_time.unwrap().seconds,
            s.last_use_time.unwrap().seconds,
            s.expire_time.unwrap().seconds,
        );
        assert!(created <= used && expires == used + 30 * 60, "{s:?}");
    }
    let phone_session = mine[1].name.clone();

    // Nobody else of the clinic but its ADMIN, and no other clinic's ADMIN.
    for (who, token) in [
        ("provider", &a.provider),
        ("other clinic's admin", &b.admin),
    ] {
        let err = sessions_of(&suite, token, &a.staff_name).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{who} lists");
        let err = revoke(&suite, token, &phone_session).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{who} revokes");
    }
    assert_eq!(
        sessions_of(&suite, &a.admin, &a.staff_name)
            .await
            .unwrap()
            .len(),
        3,
        "the clinic's ADMIN sees them"
    );

    // A foreign or made-up session id under one's own name: the same answer, nothing
    // ended.
    let admins = sessions_of(&suite, &a.admin, &a.admin_name).await.unwrap();
    let admin_sid = admins[0].name.rsplit('/').next().unwrap().to_owned();
    for name in [
        format!("{}/sessions/{admin_sid}", a.staff_name),
        format!(
            "{}/sessions/{}",
            a.staff_name,
            topsmile_kit::names::ResourceId::generate()
        ),
    ] {
        let err = revoke(&suite, &desk.access_token, &name).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name}");
        let fields = support::violations(&err);
        assert_eq!(fields, ["name"]);
    }
    for bad in ["", "clinics/x/users", "sessions/1"] {
        let err = revoke(&suite, &desk.access_token, bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
    }
    assert_eq!(
        sessions_of(&suite, &a.admin, &a.admin_name)
            .await
            .unwrap()
            .len(),
        admins.len()
    );

    // The owner ends the phone's session: its refresh token stops at once, its access
    // token within the bound; the desk goes on.
    revoke(&suite, &desk.access_token, &phone_session)
        .await
        .unwrap();
    revoke(&suite, &desk.access_token, &phone_session)
        .await
        .expect("ending it again changes nothing");
    assert_generic_unauthenticated(
        "the revoked session's refresh",
        &refresh(&suite.channel().await, &phone.refresh_token)
            .await
            .unwrap_err(),
    );
    let doors = Doors {
        gateway: suite.channel().await,
        identity: vec![connect(suite.suite.services["identity"]).await],
        patients: vec![connect(suite.suite.services["patients"]).await],
    };
    doors
        .until_every_door_says(
            &Probe::StaffReads {
                token: &phone.access_token,
                clinic,
            },
            Code::Unauthenticated,
            "a revoked session",
        )
        .await;
    doors
        .every_door_says(
            &Probe::StaffReads {
                token: &desk.access_token,
                clinic,
            },
            Code::Ok,
            "the desk",
        )
        .await;
    let left = sessions_of(&suite, &desk.access_token, &a.staff_name)
        .await
        .unwrap();
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|s| s.name != phone_session));

    // The ADMIN ends the desk's session; that is in the clinic's trail.
    let desk_session = left.iter().find(|s| s.current).unwrap().name.clone();
    revoke(&suite, &a.admin, &desk_session).await.unwrap();
    doors
        .until_every_door_says(
            &Probe::StaffReads {
                token: &desk.access_token,
                clinic,
            },
            Code::Unauthenticated,
            "a session the ADMIN revoked",
        )
        .await;
    let events = topsmile_proto::topsmile::patients::v1::audit_service_client::AuditServiceClient::with_interceptor(
        suite.channel().await,
        Bearer(Some(a.admin.clone())),
    )
    .list_audit_events(topsmile_proto::topsmile::patients::v1::ListAuditEventsRequest {
        parent: clinic.into(),
        resource: desk_session.clone(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .audit_events;
    assert_eq!(
        events
            .iter()
            .map(|e| (e.action.as_str(), e.actor.as_str(), e.outcome.as_str()))
            .collect::<Vec<_>>(),
        [("SessionService/RevokeSession", a.admin_name.as_str(), "OK")]
    );

    // A portal patient sees and ends their own sessions.
    let (patient, portal) = support::a_patient(&suite, &a, "Sessions").await;
    let own = sessions_of(&suite, &portal, &patient).await.unwrap();
    assert_eq!(own.len(), 1);
    assert!(own[0].current && own[0].name.starts_with(&format!("{patient}/sessions/")));
    let err = sessions_of(&suite, &portal, &a.staff_name)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "a patient lists staff sessions"
    );
    revoke(&suite, &portal, &own[0].name).await.unwrap();
    doors
        .until_every_door_says(
            &Probe::PatientReads {
                token: &portal,
                clinic,
                patient: &patient,
            },
            Code::Unauthenticated,
            "a portal session its patient ended",
        )
        .await;
    suite.stop().await;
}

#[tokio::test]
async fn an_idle_session_and_one_past_its_lifetime_end_as_the_clinic_says() {
    let (suite, clock) = on_test_clock(None).await;
    let a = suite.clinic_with_staff("Idle").await;
    let clinic = a.clinic.name.as_str();
    let rules = |idle: i64, lifetime: i64| identity::SessionRules {
        staff_idle_timeout: Some(prost_types::Duration {
            seconds: idle * 60,
            nanos: 0,
        }),
        staff_lifetime: Some(prost_types::Duration {
            seconds: lifetime * 60,
            nanos: 0,
        }),
        ..Default::default()
    };
    let mut clinics =
        ClinicServiceClient::with_interceptor(suite.channel().await, Bearer(Some(a.admin.clone())));
    let update = |rules: identity::SessionRules| identity::UpdateClinicRequest {
        clinic: Some(identity::Clinic {
            name: clinic.into(),
            session_rules: Some(rules),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["session_rules".into()],
        }),
    };
    // Out of bounds: every rule named.
    let err = clinics
        .update_clinic(update(rules(1, 60 * 24 * 31)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields = support::violations(&err);
    assert_eq!(
        fields,
        [
            "clinic.session_rules.staff_idle_timeout",
            "clinic.session_rules.staff_lifetime"
        ]
    );
    let set = clinics
        .update_clinic(update(rules(10, 60)))
        .await
        .unwrap()
        .into_inner()
        .clinic
        .unwrap()
        .session_rules
        .unwrap();
    assert_eq!(set.staff_idle_timeout.unwrap().seconds, 600);
    assert_eq!(
        set.patient_idle_timeout.unwrap().seconds,
        1800,
        "the default"
    );

    let email = format!(
        "idle.{}@example.com",
        topsmile_kit::names::ResourceId::generate()
    );
    UserServiceClient::with_interceptor(suite.channel().await, Bearer(Some(a.admin.clone())))
        .create_user(identity::CreateUserRequest {
            parent: clinic.into(),
            user: Some(identity::User {
                email: email.clone(),
                display_name: "Idle Staff".into(),
                role: identity::UserRole::Staff as i32,
                ..Default::default()
            }),
            password: STAFF_PASSWORD.into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let doors = Doors {
        gateway: suite.channel().await,
        identity: vec![connect(suite.suite.services["identity"]).await],
        patients: vec![connect(suite.suite.services["patients"]).await],
    };
    let channel = suite.channel().await;

    // Refreshed within the idle timeout, a session goes on; 11 idle minutes end it.
    let idle = suite.login_pair(&email, STAFF_PASSWORD).await;
    clock.advance(Duration::from_secs(9 * 60));
    let refreshed = refresh(&channel, &idle.refresh_token).await.unwrap();
    clock.advance(Duration::from_secs(11 * 60));
    assert_generic_unauthenticated(
        "refresh after the idle timeout",
        &refresh(&channel, &refreshed.refresh_token)
            .await
            .unwrap_err(),
    );
    doors
        .until_every_door_says(
            &Probe::StaffReads {
                token: &refreshed.access_token,
                clinic,
            },
            Code::Unauthenticated,
            "an idle session's access token",
        )
        .await;

    // Refreshed every few minutes, a session still ends at its lifetime.
    let busy = suite.login_pair(&email, STAFF_PASSWORD).await;
    let mut token = busy.refresh_token;
    for _ in 0..7 {
        clock.advance(Duration::from_secs(8 * 60));
        token = refresh(&channel, &token).await.unwrap().refresh_token;
    }
    clock.advance(Duration::from_secs(5 * 60));
    assert_generic_unauthenticated(
        "refresh past the lifetime",
        &refresh(&channel, &token).await.unwrap_err(),
    );
    suite.stop().await;
}

// ---------------------------------------------------------------------------------------
// Trust only what proves itself

/// A sign-in straight at identity, claiming to come from `forged` (and, if given,
/// presenting `forwarder` as the gateway's proof).
async fn direct_login(
    suite: &TestSuite,
    forged: &str,
    forwarder: Option<&str>,
    email: &str,
    password: &str,
) -> Result<identity::LoginResponse, Status> {
    let mut request = tonic::Request::new(identity::LoginRequest {
        email: email.into(),
        password: password.into(),
        device_token: String::new(),
    });
    request
        .metadata_mut()
        .insert("x-topsmile-client-address", forged.parse().unwrap());
    if let Some(token) = forwarder {
        request
            .metadata_mut()
            .insert("x-topsmile-forwarder", token.parse().unwrap());
    }
    AuthServiceClient::new(connect(suite.suite.services["identity"]).await)
        .login(request)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn forged_client_addresses_straight_at_identity_lock_after_five() {
    let (suite, _clock) = on_test_clock(None).await;
    let email = "dr.forged@example.com";
    let (_, admin) = a_user_to_lock(&suite, email).await;
    // Proofs that are not the gateway's: a staff token, another service's token.
    let patients_token =
        IdentityInternalServiceClient::new(connect(suite.suite.services["identity"]).await)
            .mint_service_token(identity::MintServiceTokenRequest {
                service: "patients".into(),
                service_secret: secrecy::ExposeSecret::expose_secret(
                    &suite.suite.service_secret().unwrap(),
                )
                .to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .access_token;
    let before = suite.suite.accounts.passwords.guesses_checked();
    for i in 0..20u8 {
        let forwarder = match i % 3 {
            0 => None,
            1 => Some(admin.as_str()),
            _ => Some(patients_token.as_str()),
        };
        let err = direct_login(
            &suite,
            &format!("203.0.113.{i}"),
            forwarder,
            email,
            &format!("guess number {i} here"),
        )
        .await
        .unwrap_err();
        assert_generic_unauthenticated("guess", &err);
    }
    let checked = suite.suite.accounts.passwords.guesses_checked() - before;
    assert!(
        checked <= 5,
        "{checked} guesses checked for 20 from one peer"
    );
    let err = direct_login(&suite, "198.51.100.77", None, email, STAFF_PASSWORD)
        .await
        .unwrap_err();
    assert_generic_unauthenticated("the right password from the locked peer", &err);
    // The gateway's own word is believed: the owner, elsewhere, signs in through it.
    login_from(&suite, [127, 0, 0, 3], email, STAFF_PASSWORD)
        .await
        .unwrap();
    suite.stop().await;
}

/// Runs `topsmile <args>` with `env` (and no inherited TopSmile settings) and returns
/// (exit status, stderr) once it exits, or kills it after ten seconds.
fn refused_start(args: &[&str], env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_topsmile"));
    command.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("TOPSMILE_") {
            command.env_remove(name);
        }
    }
    command
        .env("RUST_LOG", "error")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            return (status, stderr);
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("topsmile {args:?} started with {env:?}: it should have refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_weak_service_secret_or_a_readable_key_file_is_refused_at_start_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let strong = "0123456789abcdef0123456789abcdef";
    for (service, secret) in [
        ("identity", ""),
        ("identity", "short"),
        ("appointments", ""),
        ("appointments", &strong[..31]),
        ("gateway", "not-long-enough"),
    ] {
        let (status, stderr) = refused_start(
            &["serve", service],
            &[
                ("TOPSMILE_LISTEN", "127.0.0.1:0"),
                ("TOPSMILE_DATA_DIR", data),
                ("TOPSMILE_SERVICE_SECRET", secret),
            ],
        );
        assert!(!status.success(), "{service} with {secret:?}");
        assert!(
            stderr.contains("TOPSMILE_SERVICE_SECRET") && stderr.contains("at least 32"),
            "{service} with {secret:?}: {stderr}"
        );
    }
    let (status, stderr) =
        refused_start(&["serve", "gateway"], &[("TOPSMILE_LISTEN", "127.0.0.1:0")]);
    assert!(!status.success());
    assert!(stderr.contains("TOPSMILE_SERVICE_SECRET"), "{stderr}");

    let key_file = dir.path().join("signing-keys.json");
    KeyRing::load_or_create(&key_file).unwrap();
    std::fs::set_permissions(
        &key_file,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644),
    )
    .unwrap();
    let (status, stderr) = refused_start(
        &["serve", "identity"],
        &[
            ("TOPSMILE_LISTEN", "127.0.0.1:0"),
            ("TOPSMILE_DATA_DIR", data),
            ("TOPSMILE_SERVICE_SECRET", strong),
            ("TOPSMILE_KEY_FILE", key_file.to_str().unwrap()),
        ],
    );
    assert!(!status.success());
    assert!(
        stderr.contains("TOPSMILE_KEY_FILE") && stderr.contains("644"),
        "{stderr}"
    );
}

/// `topsmile dev` on a free loopback port with its data in `dir`, with one bootstrap
/// variable set (`bootstrap`) and the other one unset: its address and its process.
fn spawn_dev(
    dir: &std::path::Path,
    bootstrap: (&str, &str),
    stdout: std::process::Stdio,
) -> (std::net::SocketAddr, std::process::Child) {
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listen.local_addr().unwrap();
    drop(listen);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_topsmile"))
        .args(["dev", "--listen", &addr.to_string(), "--data-dir"])
        .arg(dir)
        .env_remove("TOPSMILE_BOOTSTRAP_ADMIN_EMAIL")
        .env_remove("TOPSMILE_BOOTSTRAP_ADMIN_PASSWORD")
        .env(bootstrap.0, bootstrap.1)
        .env("RUST_LOG", "error")
        .stdout(stdout)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    (addr, child)
}

#[tokio::test]
async fn a_bootstrap_password_alone_makes_the_default_admin() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, mut child) = spawn_dev(
        dir.path(),
        ("TOPSMILE_BOOTSTRAP_ADMIN_PASSWORD", "my own first password"),
        std::process::Stdio::null(),
    );
    let mut signed_in = None;
    for _ in 0..200 {
        if let Ok(channel) = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            signed_in = Some(
                AuthServiceClient::new(channel)
                    .login(identity::LoginRequest {
                        email: topsmile_identity::DEFAULT_BOOTSTRAP_EMAIL.into(),
                        password: "my own first password".into(),
                        device_token: String::new(),
                    })
                    .await,
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let answer = signed_in.expect("topsmile dev serves");
    assert!(answer.is_ok(), "{answer:?}");
}

// ---------------------------------------------------------------------------------------
// A lockout nobody can farm: known devices

async fn login_on_device(
    suite: &TestSuite,
    from: [u8; 4],
    email: &str,
    password: &str,
    device_token: &str,
) -> Result<identity::LoginResponse, Status> {
    let channel = connect_from(suite.suite.gateway, std::net::IpAddr::from(from)).await;
    AuthServiceClient::new(channel)
        .login(identity::LoginRequest {
            email: email.into(),
            password: password.into(),
            device_token: device_token.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn the_owner_signs_in_from_a_known_device_however_many_addresses_guess() {
    farmed_lockout(None).await;
}

#[tokio::test]
async fn the_owner_signs_in_from_a_known_device_however_many_addresses_guess_on_mongodb() {
    if let Some(store) = mongo_store("known_device_on_mongodb") {
        farmed_lockout(Some(store)).await;
    }
}

async fn farmed_lockout(store: Option<topsmile_kit::store::StoreChoice>) {
    let (suite, _clock) = on_test_clock(store).await;
    let email = "dr.farmed@example.com";
    let (_, admin) = a_user_to_lock(&suite, email).await;
    // The owner signed in here before: their client keeps the device token.
    let first = login_from(&suite, [127, 0, 0, 3], email, STAFF_PASSWORD)
        .await
        .unwrap();
    assert!(!first.device_token.is_empty());
    // Another account's device token, which a guesser might present.
    let other = suite
        .login_pair(ROOT_EMAIL, ROOT_PASSWORD)
        .await
        .device_token;

    // Guessing from 30 addresses, 5 each, with and without a foreign device token.
    for host in 30..60u8 {
        for i in 0..5 {
            let device = if i % 2 == 0 { other.as_str() } else { "" };
            let _ = login_on_device(
                &suite,
                [127, 0, 1, host],
                email,
                &format!("farmed guess {i} here"),
                device,
            )
            .await
            .unwrap_err();
        }
    }
    // An unknown client is locked out with everyone else ...
    let err = login_from(&suite, [127, 0, 0, 4], email, STAFF_PASSWORD)
        .await
        .unwrap_err();
    assert_generic_unauthenticated("an unknown client during the storm", &err);
    // ... the owner on their device is not, from wherever it is now.
    let again = login_on_device(
        &suite,
        [127, 0, 2, 9],
        email,
        STAFF_PASSWORD,
        &first.device_token,
    )
    .await
    .expect("the known device signs in");
    assert!(!again.device_token.is_empty());
    // A device token opens nothing by itself.
    let err = UserServiceClient::with_interceptor(
        suite.channel().await,
        Bearer(Some(again.device_token.clone())),
    )
    .list_users(identity::ListUsersRequest::default())
    .await
    .unwrap_err();
    assert_generic_unauthenticated("a device token as a bearer token", &err);

    // A guesser on the owner's device is bounded on that device alone.
    for i in 0..6 {
        let _ = login_on_device(
            &suite,
            [127, 0, 2, 9],
            email,
            &format!("device guess {i} here"),
            &again.device_token,
        )
        .await
        .unwrap_err();
    }
    let err = login_on_device(
        &suite,
        [127, 0, 2, 9],
        email,
        STAFF_PASSWORD,
        &again.device_token,
    )
    .await
    .unwrap_err();
    assert_generic_unauthenticated("a device that guessed too often", &err);

    // Not a token at all: INVALID_ARGUMENT on device_token, the same for an account
    // that does not exist.
    for who in [email, "nobody.at.all@example.com"] {
        let err = login_on_device(&suite, [127, 0, 0, 5], who, STAFF_PASSWORD, "not a token")
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{who}");
        let fields = support::violations(&err);
        assert_eq!(fields, ["device_token"], "{who}");
    }
    drop(admin);
    suite.stop().await;
}

// ---------------------------------------------------------------------------------------
// Staff MFA (TOTP), step-up and the enrolment policy

fn mfa_client(
    suite_channel: Channel,
    token: &str,
) -> identity::mfa_service_client::MfaServiceClient<
    tonic::service::interceptor::InterceptedService<Channel, Bearer>,
> {
    identity::mfa_service_client::MfaServiceClient::with_interceptor(
        suite_channel,
        Bearer(Some(token.to_owned())),
    )
}

/// The code of `secret` now, on the suite's clock.
fn code(secret: &str, clock: &TestClock, later_steps: i64) -> String {
    let now = topsmile_kit::time::Clock::now(clock).as_second() + 30 * later_steps;
    topsmile_identity::domain::mfa::code_at(secret, now).unwrap()
}

/// The claims of an access token, unverified (the test only reads them).
fn claims_of(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

async fn complete(
    suite: &TestSuite,
    challenge: &str,
    code: &str,
    recovery: &str,
) -> Result<identity::CompleteMfaSignInResponse, Status> {
    AuthServiceClient::new(suite.channel().await)
        .complete_mfa_sign_in(identity::CompleteMfaSignInRequest {
            challenge: challenge.into(),
            code: code.into(),
            recovery_code: recovery.into(),
            device_token: String::new(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn an_admin_enrols_totp_and_signs_in_with_it_once_per_code() {
    mfa_journey(None).await;
}

#[tokio::test]
async fn an_admin_enrols_totp_and_signs_in_with_it_once_per_code_on_mongodb() {
    if let Some(store) = mongo_store("an_admin_enrols_totp_on_mongodb") {
        mfa_journey(Some(store)).await;
    }
}

async fn mfa_journey(store: Option<topsmile_kit::store::StoreChoice>) {
    let (suite, clock) = on_test_clock(store).await;
    let a = suite.clinic_with_staff("MFA").await;
    let (name, email, _) = another_admin(&suite, &a).await;

    // Inside the grace period: tokens, and the answer says enrolment is due.
    let first = suite.login_pair(&email, STAFF_PASSWORD).await;
    assert!(first.mfa_challenge.is_empty() && !first.access_token.is_empty());
    let due = first
        .mfa_enrolment_due
        .expect("an ADMIN must enrol")
        .seconds;
    let now = topsmile_kit::time::Clock::now(clock.as_ref()).as_second();
    assert!(
        (due - now - 7 * 86_400).abs() < 60,
        "7 days of grace: {due} vs {now}"
    );
    assert!(!first.mfa_enrolment_only);
    assert_eq!(
        claims_of(&first.access_token)["amr"],
        serde_json::json!(["pwd"])
    );

    // Enrol: a secret and its URI; a wrong first code changes nothing.
    let mut mfa = mfa_client(suite.channel().await, &first.access_token);
    let enrolled = mfa
        .enroll_mfa(identity::EnrollMfaRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        enrolled.otpauth_uri.starts_with("otpauth://totp/TopSmile:")
            && enrolled.otpauth_uri.contains(&enrolled.secret),
        "{enrolled:?}"
    );
    let secret = enrolled.secret;
    let wrong = mfa
        .confirm_mfa(identity::ConfirmMfaRequest {
            code: "000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::InvalidArgument);
    let recovery = mfa
        .confirm_mfa(identity::ConfirmMfaRequest {
            code: code(&secret, &clock, 0),
        })
        .await
        .unwrap()
        .into_inner()
        .recovery_codes;
    assert_eq!(recovery.len(), 10);
    let again = mfa
        .enroll_mfa(identity::EnrollMfaRequest {})
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);

    // Sign-in is now two steps: a challenge, then a code.
    let step = suite.login_pair(&email, STAFF_PASSWORD).await;
    assert!(step.access_token.is_empty() && step.refresh_token.is_empty());
    assert!(!step.mfa_challenge.is_empty());
    // The confirming code's step is spent: the same code is a replay.
    let replay = complete(&suite, &step.mfa_challenge, &code(&secret, &clock, 0), "")
        .await
        .unwrap_err();
    assert_generic_unauthenticated("a replayed code", &replay);
    let wrong = complete(&suite, &step.mfa_challenge, "123456", "")
        .await
        .unwrap_err();
    assert_generic_unauthenticated("a wrong code", &wrong);
    let both = complete(&suite, &step.mfa_challenge, "123456", &recovery[0])
        .await
        .unwrap_err();
    assert_eq!(both.code(), Code::InvalidArgument);
    let done = complete(&suite, &step.mfa_challenge, &code(&secret, &clock, 1), "")
        .await
        .unwrap();
    assert_eq!(
        claims_of(&done.access_token)["amr"],
        serde_json::json!(["pwd", "otp"])
    );
    assert!(claims_of(&done.access_token)["auth_time"].as_i64().unwrap() > 0);
    // The challenge worked once.
    clock.advance(Duration::from_secs(30));
    let spent = complete(&suite, &step.mfa_challenge, &code(&secret, &clock, 1), "")
        .await
        .unwrap_err();
    assert_generic_unauthenticated("a spent challenge", &spent);

    // A recovery code works once; an expired challenge not at all.
    let step = suite.login_pair(&email, STAFF_PASSWORD).await;
    let rescued = complete(&suite, &step.mfa_challenge, "", &recovery[0])
        .await
        .unwrap();
    assert_eq!(rescued.recovery_codes_left, 9);
    let step = suite.login_pair(&email, STAFF_PASSWORD).await;
    let reused = complete(&suite, &step.mfa_challenge, "", &recovery[0])
        .await
        .unwrap_err();
    assert_generic_unauthenticated("a used recovery code", &reused);
    clock.advance(Duration::from_secs(6 * 60));
    let expired = complete(&suite, &step.mfa_challenge, &code(&secret, &clock, 0), "")
        .await
        .unwrap_err();
    assert_generic_unauthenticated("an expired challenge", &expired);
    // A made-up challenge: the same answer.
    let made_up = complete(
        &suite,
        &format!("{}~{}~nothing", a.clinic.name, name),
        "123456",
        "",
    )
    .await
    .unwrap_err();
    assert_generic_unauthenticated("a made-up challenge", &made_up);

    // The clinic's ADMIN resets it (a lost phone): sign-in is one step again.
    mfa_client(
        suite.channel().await,
        &suite
            .login(&a_admin_email(&suite, &a).await, STAFF_PASSWORD)
            .await,
    )
    .reset_mfa(identity::ResetMfaRequest { name: name.clone() })
    .await
    .unwrap();
    let plain = suite.login_pair(&email, STAFF_PASSWORD).await;
    assert!(plain.mfa_challenge.is_empty() && !plain.access_token.is_empty());

    // Enrolment, recovery-code use and the reset are in the clinic's trail.
    let events = topsmile_proto::topsmile::patients::v1::audit_service_client::AuditServiceClient::with_interceptor(
        suite.channel().await,
        Bearer(Some(a.admin.clone())),
    )
    .list_audit_events(topsmile_proto::topsmile::patients::v1::ListAuditEventsRequest {
        parent: a.clinic.name.clone(),
        resource: name.clone(),
        page_size: 100,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .audit_events;
    let mfa_events: Vec<_> = events
        .iter()
        .filter(|e| e.action.starts_with("MfaService/"))
        .map(|e| e.action.as_str())
        .collect();
    assert_eq!(
        mfa_events,
        [
            "MfaService/ConfirmMfa",
            "MfaService/UseRecoveryCode",
            "MfaService/ResetMfa"
        ]
    );
    suite.stop().await;
}

/// The email of `a`'s first ADMIN.
async fn a_admin_email(suite: &TestSuite, a: &support::ClinicStaff) -> String {
    UserServiceClient::with_interceptor(suite.channel().await, Bearer(Some(a.admin.clone())))
        .get_user(identity::GetUserRequest {
            name: a.admin_name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap()
        .email
}

#[tokio::test]
async fn sensitive_methods_need_a_recent_sign_in_and_past_the_grace_only_enrolment_works() {
    let (suite, clock) = on_test_clock(None).await;
    let signed_in = suite.login_pair(ROOT_EMAIL, ROOT_PASSWORD).await;
    let root = signed_in.access_token.clone();
    let clinic = support::create_clinic_as(suite.channel().await, &root, "Step Up").await;
    let mut users =
        UserServiceClient::with_interceptor(suite.channel().await, Bearer(Some(root.clone())));
    let make = |role: identity::UserRole, email: &str| identity::CreateUserRequest {
        parent: clinic.name.clone(),
        user: Some(identity::User {
            email: email.into(),
            display_name: "Step Up".into(),
            role: role as i32,
            ..Default::default()
        }),
        password: STAFF_PASSWORD.into(),
        request_id: String::new(),
    };
    // Not sensitive: a STAFF user.
    let staff = users
        .create_user(make(identity::UserRole::Staff, "stepup.staff@example.com"))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    // Twenty minutes after signing in, a refreshed token (its `auth_time` is the
    // sign-in's) is refused for sensitive calls: an ADMIN, an unlock.
    clock.advance(Duration::from_secs(20 * 60));
    let refreshed = refresh(&suite.channel().await, &signed_in.refresh_token)
        .await
        .unwrap()
        .access_token;
    let mut users =
        UserServiceClient::with_interceptor(suite.channel().await, Bearer(Some(refreshed)));
    let err = users
        .create_user(make(identity::UserRole::Admin, "stepup.admin@example.com"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.get_error_details()
            .error_info()
            .map(|i| i.reason.clone()),
        Some("STEP_UP_REQUIRED".into()),
        "{err:?}"
    );
    let err = users
        .unlock_user(identity::UnlockUserRequest {
            name: staff.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    // Signed in again, the same calls go through.
    let fresh = suite.root_token().await;
    let mut users = UserServiceClient::with_interceptor(suite.channel().await, Bearer(Some(fresh)));
    users
        .create_user(make(identity::UserRole::Admin, "stepup.admin@example.com"))
        .await
        .unwrap();
    users
        .unlock_user(identity::UnlockUserRequest { name: staff.name })
        .await
        .unwrap();

    // Eight days later the new ADMIN, never enrolled, may only enrol.
    clock.advance(Duration::from_secs(8 * 86_400));
    let late = suite
        .login_pair("stepup.admin@example.com", STAFF_PASSWORD)
        .await;
    assert!(late.mfa_enrolment_only, "{late:?}");
    let err = UserServiceClient::with_interceptor(
        suite.channel().await,
        Bearer(Some(late.access_token.clone())),
    )
    .list_users(identity::ListUsersRequest {
        parent: clinic.name.clone(),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.get_error_details()
            .error_info()
            .map(|i| i.reason.clone()),
        Some("MFA_ENROLMENT_REQUIRED".into())
    );
    let mut mfa = mfa_client(suite.channel().await, &late.access_token);
    let secret = mfa
        .enroll_mfa(identity::EnrollMfaRequest {})
        .await
        .unwrap()
        .into_inner()
        .secret;
    mfa.confirm_mfa(identity::ConfirmMfaRequest {
        code: code(&secret, &clock, 0),
    })
    .await
    .unwrap();
    let step = suite
        .login_pair("stepup.admin@example.com", STAFF_PASSWORD)
        .await;
    let done = complete(&suite, &step.mfa_challenge, &code(&secret, &clock, 1), "")
        .await
        .unwrap();
    UserServiceClient::with_interceptor(suite.channel().await, Bearer(Some(done.access_token)))
        .list_users(identity::ListUsersRequest {
            parent: clinic.name.clone(),
            ..Default::default()
        })
        .await
        .expect("enrolled and signed in with a code: everything again");
    suite.stop().await;
}

#[tokio::test]
async fn guessing_codes_meets_the_sign_in_lock() {
    let (suite, clock) = on_test_clock(None).await;
    let a = suite.clinic_with_staff("Code Guessing").await;
    let (_, email, token) = another_admin(&suite, &a).await;
    let mut mfa = mfa_client(suite.channel().await, &token);
    let secret = mfa
        .enroll_mfa(identity::EnrollMfaRequest {})
        .await
        .unwrap()
        .into_inner()
        .secret;
    mfa.confirm_mfa(identity::ConfirmMfaRequest {
        code: code(&secret, &clock, 0),
    })
    .await
    .unwrap();
    let step = suite.login_pair(&email, STAFF_PASSWORD).await;
    for guess in 0..6 {
        let err = complete(
            &suite,
            &step.mfa_challenge,
            &format!("{:06}", 100_000 + guess),
            "",
        )
        .await
        .unwrap_err();
        assert_generic_unauthenticated("a guessed code", &err);
    }
    // Locked for this address: the right code is refused too ...
    let err = complete(&suite, &step.mfa_challenge, &code(&secret, &clock, 1), "")
        .await
        .unwrap_err();
    assert_generic_unauthenticated("the right code while locked", &err);
    // ... and so is the password (one lock for both factors).
    let err = AuthServiceClient::new(suite.channel().await)
        .login(identity::LoginRequest {
            email: email.clone(),
            password: STAFF_PASSWORD.into(),
            device_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_generic_unauthenticated("the password while locked", &err);
    suite.stop().await;
}

#[tokio::test]
async fn a_clinic_can_require_mfa_of_every_staff_role() {
    let (suite, clock) = on_test_clock(None).await;
    let a = suite.clinic_with_staff("MFA For All").await;
    let email = a_admin_email(&suite, &a).await;
    let staff_email =
        UserServiceClient::with_interceptor(suite.channel().await, Bearer(Some(a.admin.clone())))
            .get_user(identity::GetUserRequest {
                name: a.staff_name.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap()
            .email;
    // STAFF need no MFA by default.
    let before = suite.login_pair(&staff_email, STAFF_PASSWORD).await;
    assert!(before.mfa_enrolment_due.is_none(), "{before:?}");
    let turn_on = identity::UpdateClinicRequest {
        clinic: Some(identity::Clinic {
            name: a.clinic.name.clone(),
            session_rules: Some(identity::SessionRules {
                require_mfa_for_all_staff: true,
                ..Default::default()
            }),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["session_rules".into()],
        }),
    };
    // Changing the MFA policy is sensitive: a token from a sign-in 20 minutes ago is
    // refused, a fresh one may.
    let signed_in = suite.login_pair(&email, STAFF_PASSWORD).await;
    clock.advance(Duration::from_secs(20 * 60));
    let stale = refresh(&suite.channel().await, &signed_in.refresh_token)
        .await
        .unwrap()
        .access_token;
    let err = ClinicServiceClient::with_interceptor(suite.channel().await, Bearer(Some(stale)))
        .update_clinic(turn_on.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let fresh = suite.login(&email, STAFF_PASSWORD).await;
    let rules = ClinicServiceClient::with_interceptor(suite.channel().await, Bearer(Some(fresh)))
        .update_clinic(turn_on)
        .await
        .unwrap()
        .into_inner()
        .clinic
        .unwrap()
        .session_rules
        .unwrap();
    assert!(rules.require_mfa_for_all_staff && rules.all_staff_mfa_required_since.is_some());
    // STAFF now have 7 days to enrol, then may only enrol.
    let due = suite.login_pair(&staff_email, STAFF_PASSWORD).await;
    assert!(
        due.mfa_enrolment_due.is_some() && !due.mfa_enrolment_only,
        "{due:?}"
    );
    clock.advance(Duration::from_secs(8 * 86_400));
    let late = suite.login_pair(&staff_email, STAFF_PASSWORD).await;
    assert!(late.mfa_enrolment_only, "{late:?}");
    suite.stop().await;
}

#[tokio::test]
async fn a_bootstrap_email_alone_gets_a_generated_password_in_dev_and_is_refused_by_identity() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, mut child) = spawn_dev(
        dir.path(),
        ("TOPSMILE_BOOTSTRAP_ADMIN_EMAIL", "boss@example.com"),
        std::process::Stdio::piped(),
    );
    let stdout = child.stdout.take().unwrap();
    let printed = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        while let Some(Ok(line)) = lines.next() {
            if line.contains("Created the super admin boss@example.com") {
                return lines
                    .next()
                    .and_then(Result::ok)
                    .map(|l| l.trim().to_owned());
            }
        }
        None
    });
    let password = tokio::time::timeout(Duration::from_secs(30), printed)
        .await
        .expect("topsmile dev prints the admin")
        .unwrap();
    let signed_in = match &password {
        Some(password) => Some(
            AuthServiceClient::new(
                Channel::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect()
                    .await
                    .unwrap(),
            )
            .login(identity::LoginRequest {
                email: "boss@example.com".into(),
                password: password.clone(),
                device_token: String::new(),
            })
            .await,
        ),
        None => None,
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        signed_in.is_some_and(|r| r.is_ok()),
        "the printed password signs in: {password:?}"
    );

    let data = dir.path().join("identity");
    let (status, stderr) = refused_start(
        &["serve", "identity"],
        &[
            ("TOPSMILE_LISTEN", "127.0.0.1:0"),
            ("TOPSMILE_DATA_DIR", data.to_str().unwrap()),
            (
                "TOPSMILE_SERVICE_SECRET",
                "0123456789abcdef0123456789abcdef",
            ),
            ("TOPSMILE_BOOTSTRAP_ADMIN_EMAIL", "boss@example.com"),
        ],
    );
    assert!(!status.success());
    assert!(
        stderr.contains(
            "TOPSMILE_BOOTSTRAP_ADMIN_EMAIL is set without TOPSMILE_BOOTSTRAP_ADMIN_PASSWORD"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_portal_patient_on_a_known_device_signs_in_however_many_addresses_guess() {
    let (suite, _clock) = on_test_clock(None).await;
    let a = suite.clinic_with_staff("Portal Devices").await;
    let (patient, _) = support::a_patient(&suite, &a, "Devices").await;
    // `a_patient` gave the patient an email and a portal password, and signed in once.
    let email = format!("portal.{}@example.com", patient.rsplit('/').next().unwrap());
    let portal = |from: [u8; 4], password: String, device: String| {
        let (gateway, clinic, email) = (suite.suite.gateway, a.clinic.name.clone(), email.clone());
        async move {
            AuthServiceClient::new(connect_from(gateway, std::net::IpAddr::from(from)).await)
                .login_patient(identity::LoginPatientRequest {
                    clinic,
                    email,
                    password,
                    device_token: device,
                })
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let right = "a portal password for tests".to_owned();
    let first = portal([127, 0, 0, 3], right.clone(), String::new())
        .await
        .unwrap();
    assert!(!first.device_token.is_empty());
    for host in 30..45u8 {
        for i in 0..5 {
            let _ = portal(
                [127, 0, 1, host],
                format!("portal guess {i} here"),
                String::new(),
            )
            .await
            .unwrap_err();
        }
    }
    let err = portal([127, 0, 0, 4], right.clone(), String::new())
        .await
        .unwrap_err();
    assert_generic_unauthenticated("an unknown client during the storm", &err);
    portal([127, 0, 2, 9], right, first.device_token)
        .await
        .expect("the patient's known device signs in");
    suite.stop().await;
}

#[tokio::test]
async fn recovery_codes_are_regenerated_with_a_code_and_mfa_is_disabled_with_one() {
    let (suite, clock) = on_test_clock(None).await;
    let a = suite.clinic_with_staff("MFA Off").await;
    let (_, email, token) = another_admin(&suite, &a).await;
    let mut mfa = mfa_client(suite.channel().await, &token);
    let secret = mfa
        .enroll_mfa(identity::EnrollMfaRequest {})
        .await
        .unwrap()
        .into_inner()
        .secret;
    let old = mfa
        .confirm_mfa(identity::ConfirmMfaRequest {
            code: code(&secret, &clock, 0),
        })
        .await
        .unwrap()
        .into_inner()
        .recovery_codes;
    // A wrong code regenerates nothing; the next step's code does.
    let wrong = mfa
        .regenerate_recovery_codes(identity::RegenerateRecoveryCodesRequest {
            code: "000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::InvalidArgument);
    let new = mfa
        .regenerate_recovery_codes(identity::RegenerateRecoveryCodesRequest {
            code: code(&secret, &clock, 1),
        })
        .await
        .unwrap()
        .into_inner()
        .recovery_codes;
    assert_eq!(new.len(), 10);
    // The old codes stopped working; a new one turns MFA off.
    let stale = mfa
        .disable_mfa(identity::DisableMfaRequest {
            code: String::new(),
            recovery_code: old[0].clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::InvalidArgument);
    mfa.disable_mfa(identity::DisableMfaRequest {
        code: String::new(),
        recovery_code: new[0].clone(),
    })
    .await
    .unwrap();
    let plain = suite.login_pair(&email, STAFF_PASSWORD).await;
    assert!(plain.mfa_challenge.is_empty() && !plain.access_token.is_empty());
    suite.stop().await;
}
