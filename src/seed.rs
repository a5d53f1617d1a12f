//! `topsmile seed`: fills a running suite with clinics, staff, providers, patients,
//! medical histories and appointments, through the gateway like any client, so what it
//! makes is exactly what the API would make.
//!
//! Every create carries a request id derived from its place in the plan
//! (`seed-clinic-3`, `seed-appointment-3-120`, ...), so running it again adds nothing:
//! each call answers what the first run made. Calls run many at once (HTTP/2 streams on
//! one connection), with progress bars on a terminal.

use std::{sync::Arc, time::Instant};

use anyhow::Context;
use futures::{StreamExt, stream};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use jiff::{SignedDuration, Timestamp, civil::Weekday, tz::TimeZone};
use tonic::{
    Code, Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};
use topsmile_proto::{
    google::r#type::{Date, DayOfWeek},
    topsmile::{
        appointments::v1::{
            self as appointments, appointment_service_client::AppointmentServiceClient,
        },
        identity::v1::{
            self as identity, auth_service_client::AuthServiceClient,
            clinic_service_client::ClinicServiceClient, user_service_client::UserServiceClient,
        },
        patients::v1::{
            self as patients, medical_history_service_client::MedicalHistoryServiceClient,
            patient_service_client::PatientServiceClient,
        },
        providers::v1::{self as providers, provider_service_client::ProviderServiceClient},
    },
};

/// The password of every staff account the seed makes (and of the demo patient's
/// portal): these are sample data, never real accounts.
pub const SEED_PASSWORD: &str = "seed password, not for production";

/// How much to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub clinics: usize,
    /// Staff per clinic: one ADMIN, the PROVIDERs (one per provider), the rest STAFF.
    pub staff: usize,
    pub providers: usize,
    pub patients: usize,
    pub histories: usize,
    pub appointments: usize,
}

impl Plan {
    /// A small clinic or two to try things with.
    pub fn demo() -> Self {
        Self {
            clinics: 2,
            staff: 4,
            providers: 2,
            patients: 20,
            histories: 10,
            appointments: 40,
        }
    }

    /// The seed data of the original system: 100 clinics, 500 staff, 200 providers,
    /// 10,000 patients with as many medical histories, 50,000 appointments.
    pub fn seed() -> Self {
        Self {
            clinics: 100,
            staff: 5,
            providers: 2,
            patients: 100,
            histories: 100,
            appointments: 500,
        }
    }
}

/// Who runs the seed, and where.
pub struct Target {
    pub gateway: String,
    pub admin_email: String,
    pub admin_password: String,
    /// Draw progress bars (on a terminal).
    pub progress: bool,
}

/// What a seed run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub clinics: Vec<String>,
    /// The first clinic's ADMIN, to sign in with.
    pub admin_email: String,
    /// A patient of the first clinic with a portal password, to sign in with.
    pub patient_email: String,
    pub calls: usize,
    pub elapsed_ms: u128,
}

#[derive(Clone)]
struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

/// The clients, all as the super admin, over one connection.
#[derive(Clone)]
struct Clients {
    clinics: ClinicServiceClient<Authed>,
    users: UserServiceClient<Authed>,
    providers: ProviderServiceClient<Authed>,
    patients: PatientServiceClient<Authed>,
    histories: MedicalHistoryServiceClient<Authed>,
    appointments: AppointmentServiceClient<Authed>,
}

struct Bars {
    all: Vec<ProgressBar>,
}

impl Bars {
    fn new(show: bool, plan: &Plan) -> Self {
        let multi = MultiProgress::with_draw_target(if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let style =
            ProgressStyle::with_template("{prefix:>13} {bar:40} {pos:>6}/{len:6} {per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
        let totals = [
            ("clinics", plan.clinics),
            ("staff", plan.clinics * plan.staff),
            ("providers", plan.clinics * plan.providers),
            ("patients", plan.clinics * plan.patients),
            ("histories", plan.clinics * plan.histories),
            ("appointments", plan.clinics * plan.appointments),
        ];
        let all = totals
            .iter()
            .map(|(name, total)| {
                let bar = multi.add(ProgressBar::new(u64::try_from(*total).unwrap_or(0)));
                bar.set_style(style.clone());
                bar.set_prefix(*name);
                bar
            })
            .collect();
        Self { all }
    }

    fn tick(&self, phase: usize) {
        if let Some(bar) = self.all.get(phase) {
            bar.inc(1);
        }
    }

    fn finish(&self) {
        for bar in &self.all {
            bar.finish();
        }
    }
}

const CLINICS: usize = 0;
const STAFF: usize = 1;
const PROVIDERS: usize = 2;
const PATIENTS: usize = 3;
const HISTORIES: usize = 4;
const APPOINTMENTS: usize = 5;

/// How many calls run at once.
const IN_FLIGHT: usize = 32;

/// Runs the seed: signs in as the super admin, then makes `plan` through the gateway.
pub async fn run(target: &Target, plan: &Plan) -> anyhow::Result<Report> {
    let started = Instant::now();
    let channel = Channel::from_shared(format!("http://{}", target.gateway))
        .context("the gateway address")?
        .connect()
        .await
        .with_context(|| format!("cannot reach the gateway at {}", target.gateway))?;
    let token = AuthServiceClient::new(channel.clone())
        .login(identity::LoginRequest {
            email: target.admin_email.clone(),
            password: target.admin_password.clone(),
            device_token: String::new(),
        })
        .await
        .context("signing in as the super admin")?
        .into_inner()
        .access_token;
    let bearer = Bearer(
        format!("Bearer {token}")
            .parse()
            .context("the access token")?,
    );
    let clients = Clients {
        clinics: ClinicServiceClient::with_interceptor(channel.clone(), bearer.clone()),
        users: UserServiceClient::with_interceptor(channel.clone(), bearer.clone()),
        providers: ProviderServiceClient::with_interceptor(channel.clone(), bearer.clone()),
        patients: PatientServiceClient::with_interceptor(channel.clone(), bearer.clone()),
        histories: MedicalHistoryServiceClient::with_interceptor(channel.clone(), bearer.clone()),
        appointments: AppointmentServiceClient::with_interceptor(channel, bearer),
    };
    let bars = Arc::new(Bars::new(target.progress, plan));
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let first_monday = next_monday(topsmile_kit::time::now());
    let clinics: Vec<anyhow::Result<String>> = stream::iter(0..plan.clinics)
        .map(|i| {
            let (clients, bars, calls) = (clients.clone(), bars.clone(), calls.clone());
            async move { seed_clinic(&clients, plan, i, first_monday, &bars, &calls).await }
        })
        .buffered(4)
        .collect()
        .await;
    bars.finish();
    let clinics = clinics.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Report {
        clinics,
        admin_email: staff_email(0, 0),
        patient_email: patient_email(0, 0),
        calls: calls.load(std::sync::atomic::Ordering::Relaxed),
        elapsed_ms: started.elapsed().as_millis(),
    })
}

/// The Monday after the next day, as a date (appointments start then).
pub fn next_monday(now: Timestamp) -> jiff::civil::Date {
    let mut day = now.to_zoned(TimeZone::UTC).date();
    day = day.tomorrow().unwrap_or(day);
    while day.weekday() != Weekday::Monday {
        day = day.tomorrow().unwrap_or(day);
    }
    day
}

fn staff_email(clinic: usize, k: usize) -> String {
    let role = match k {
        0 => "admin",
        _ => "staff",
    };
    format!("{role}{k}.clinic{clinic}@seed.topsmile.test")
}

fn patient_email(clinic: usize, k: usize) -> String {
    format!("patient{k}.clinic{clinic}@seed.topsmile.test")
}

const GIVEN: &[&str] = &[
    "Ana",
    "Bruno",
    "Carla",
    "Diego",
    "Elisa",
    "Fábio",
    "Gabriela",
    "Hugo",
    "Iara",
    "João",
    "Karina",
    "Lucas",
    "Marina",
    "Nuno",
    "Olívia",
    "Paulo",
    "Quitéria",
    "Rafael",
    "Sofia",
    "Tiago",
];
const FAMILY: &[&str] = &[
    "Almeida",
    "Barbosa",
    "Costa",
    "Dias",
    "Esteves",
    "Ferreira",
    "Gomes",
    "Henriques",
    "Lima",
    "Martins",
    "Nunes",
    "Oliveira",
    "Pereira",
    "Ribeiro",
    "Souza",
];

/// A call's answer: a retried create answers its first result, so an error here is
/// real, except the ones `tolerate` lists (a step the first run already took).
fn settle<T>(
    result: Result<T, Status>,
    tolerate: &[Code],
    what: &str,
) -> anyhow::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(status) if tolerate.contains(&status.code()) => Ok(None),
        Err(status) => Err(anyhow::anyhow!(
            "{what}: {:?}: {}",
            status.code(),
            status.message()
        )),
    }
}

async fn seed_clinic(
    c: &Clients,
    plan: &Plan,
    i: usize,
    first_monday: jiff::civil::Date,
    bars: &Bars,
    calls: &std::sync::atomic::AtomicUsize,
) -> anyhow::Result<String> {
    let count = || calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let clinic = c
        .clinics
        .clone()
        .create_clinic(identity::CreateClinicRequest {
            clinic: Some(identity::Clinic {
                display_name: format!("Sorriso {i}"),
                time_zone: "America/Sao_Paulo".into(),
                phone: format!("+55 11 5555-{:04}", i % 10_000),
                email: format!("front.clinic{i}@seed.topsmile.test"),
                ..Default::default()
            }),
            request_id: format!("seed-clinic-{i}"),
        })
        .await
        .with_context(|| format!("clinic {i}"))?
        .into_inner()
        .clinic
        .context("no clinic answered")?
        .name;
    count();
    bars.tick(CLINICS);

    // Staff: an ADMIN, a PROVIDER per provider, the rest STAFF.
    let staff: Vec<anyhow::Result<(usize, String)>> = stream::iter(0..plan.staff)
        .map(|k| {
            let mut users = c.users.clone();
            let clinic = clinic.clone();
            async move {
                let role = if k == 0 {
                    identity::UserRole::Admin
                } else if k <= plan.providers {
                    identity::UserRole::Provider
                } else {
                    identity::UserRole::Staff
                };
                let email = if role == identity::UserRole::Provider {
                    format!("provider{k}.clinic{i}@seed.topsmile.test")
                } else {
                    staff_email(i, k)
                };
                let user = users
                    .create_user(identity::CreateUserRequest {
                        parent: clinic,
                        user: Some(identity::User {
                            email,
                            display_name: format!(
                                "{} {}",
                                GIVEN[(i + k) % GIVEN.len()],
                                FAMILY[k % FAMILY.len()]
                            ),
                            role: role as i32,
                            ..Default::default()
                        }),
                        password: SEED_PASSWORD.into(),
                        request_id: format!("seed-user-{i}-{k}"),
                    })
                    .await
                    .with_context(|| format!("staff {k} of clinic {i}"))?
                    .into_inner()
                    .user
                    .context("no user answered")?;
                Ok((k, user.name))
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .inspect(|_| {
            count();
            bars.tick(STAFF);
        })
        .collect()
        .await;
    let mut staff = staff.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    staff.sort();

    // Providers, each linked to its PROVIDER user, weekdays 08-12 and 13-18.
    let hours = |day: DayOfWeek| providers::WorkingDay {
        day: day as i32,
        intervals: vec![
            providers::TimeInterval {
                start_minute: 8 * 60,
                end_minute: 12 * 60,
            },
            providers::TimeInterval {
                start_minute: 13 * 60,
                end_minute: 18 * 60,
            },
        ],
    };
    let mut provider_names = Vec::new();
    for p in 0..plan.providers {
        let user = staff
            .get(p + 1)
            .filter(|_| p < plan.staff.saturating_sub(1))
            .map(|(_, name)| name.clone())
            .unwrap_or_default();
        let provider = c
            .providers
            .clone()
            .create_provider(providers::CreateProviderRequest {
                parent: clinic.clone(),
                provider: Some(providers::Provider {
                    display_name: format!(
                        "Dr. {} {}",
                        GIVEN[(i * 3 + p) % GIVEN.len()],
                        FAMILY[(i + p) % FAMILY.len()]
                    ),
                    specialties: vec![
                        ["general dentistry", "orthodontics", "endodontics"][p % 3].into(),
                    ],
                    user,
                    working_hours: [
                        DayOfWeek::Monday,
                        DayOfWeek::Tuesday,
                        DayOfWeek::Wednesday,
                        DayOfWeek::Thursday,
                        DayOfWeek::Friday,
                    ]
                    .into_iter()
                    .map(hours)
                    .collect(),
                    date_overrides: vec![providers::DateOverride {
                        date: Some(Date {
                            year: 2026,
                            month: 12,
                            day: 25,
                        }),
                        intervals: vec![],
                    }],
                    ..Default::default()
                }),
                request_id: format!("seed-provider-{i}-{p}"),
            })
            .await
            .with_context(|| format!("provider {p} of clinic {i}"))?
            .into_inner()
            .provider
            .context("no provider answered")?;
        count();
        bars.tick(PROVIDERS);
        provider_names.push(provider.name);
    }

    // Patients.
    let patients: Vec<anyhow::Result<(usize, String)>> = stream::iter(0..plan.patients)
        .map(|k| {
            let mut client = c.patients.clone();
            let clinic = clinic.clone();
            async move {
                let patient = client
                    .create_patient(patients::CreatePatientRequest {
                        parent: clinic,
                        patient: Some(patients::Patient {
                            given_name: GIVEN[(k * 7 + i) % GIVEN.len()].into(),
                            family_name: FAMILY[(k + i * 5) % FAMILY.len()].into(),
                            email: patient_email(i, k),
                            phone: format!("+55 11 9{:04}-{:04}", i % 10_000, k % 10_000),
                            date_of_birth: Some(Date {
                                year: i32::try_from(1950 + (k * 13 + i) % 60).unwrap_or(1980),
                                month: i32::try_from(1 + k % 12).unwrap_or(1),
                                day: i32::try_from(1 + (k * 7) % 28).unwrap_or(1),
                            }),
                            ..Default::default()
                        }),
                        request_id: format!("seed-patient-{i}-{k}"),
                    })
                    .await
                    .with_context(|| format!("patient {k} of clinic {i}"))?
                    .into_inner()
                    .patient
                    .context("no patient answered")?;
                Ok((k, patient.name))
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .inspect(|_| {
            count();
            bars.tick(PATIENTS);
        })
        .collect()
        .await;
    let mut patients = patients.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    patients.sort();
    let patient_names: Vec<String> = patients.into_iter().map(|(_, n)| n).collect();

    // The first patient of the first clinic gets a portal password, to try the portal.
    if i == 0
        && let Some(first) = patient_names.first()
    {
        let set = c
            .patients
            .clone()
            .set_patient_password(patients::SetPatientPasswordRequest {
                name: first.clone(),
                new_password: SEED_PASSWORD.into(),
                current_password: String::new(),
            })
            .await;
        settle(set, &[], "the demo patient's portal password")?;
        count();
    }

    // Medical histories: etag "0" writes only a history that does not exist yet, so a
    // second run is ABORTED here and changes nothing.
    let histories: Vec<anyhow::Result<()>> =
        stream::iter(patient_names.iter().take(plan.histories).cloned())
            .map(|patient| {
                let mut client = c.histories.clone();
                async move {
                    let written = client
                        .update_medical_history(patients::UpdateMedicalHistoryRequest {
                            medical_history: Some(patients::MedicalHistory {
                                name: format!("{patient}/medicalHistory"),
                                etag: "0".into(),
                                allergies: vec![patients::Allergy {
                                    allergen: "penicillin".into(),
                                    reaction: "rash".into(),
                                    severity: patients::AllergySeverity::Moderate as i32,
                                }],
                                notes: "Seed data.".into(),
                                ..Default::default()
                            }),
                            update_mask: None,
                        })
                        .await;
                    settle(written, &[Code::Aborted], "a medical history").map(drop)
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .inspect(|_| {
                count();
                bars.tick(HISTORIES);
            })
            .collect()
            .await;
    histories.into_iter().collect::<anyhow::Result<Vec<_>>>()?;

    // Appointments: every provider's half-hour slots, weekday after weekday from the
    // first Monday, the providers side by side, each time with other patients. A tenth
    // are cancelled and a tenth confirmed (a second run finds them so: WRONG_STATE).
    let zone = TimeZone::get("America/Sao_Paulo").context("the clinics' zone")?;
    let starts: Vec<Timestamp> = (0..)
        .flat_map(|day: i64| {
            let date = first_monday + SignedDuration::from_hours(24 * day);
            let slots = if date.weekday().to_monday_zero_offset() < 5 {
                (0..8)
                    .map(|k| 8 * 60 + 30 * k)
                    .chain((0..10).map(|k| 13 * 60 + 30 * k))
                    .collect()
            } else {
                Vec::new()
            };
            let zone = zone.clone();
            slots.into_iter().filter_map(move |minute: i64| {
                date.at(
                    i8::try_from(minute / 60).ok()?,
                    i8::try_from(minute % 60).ok()?,
                    0,
                    0,
                )
                .to_zoned(zone.clone())
                .ok()
                .map(|z| z.timestamp())
            })
        })
        .take(plan.appointments.div_ceil(plan.providers.max(1)))
        .collect();
    let work: Vec<(usize, String, String, Timestamp)> = (0..plan.appointments)
        .filter_map(|j| {
            let provider = provider_names.get(j % provider_names.len().max(1))?.clone();
            let patient = patient_names.get(j % patient_names.len().max(1))?.clone();
            let at = *starts.get(j / provider_names.len().max(1))?;
            Some((j, provider, patient, at))
        })
        .collect();
    let booked: Vec<anyhow::Result<()>> = stream::iter(work)
        .map(|(j, provider, patient, at)| {
            let mut client = c.appointments.clone();
            let clinic = clinic.clone();
            async move {
                let visit = client
                    .book_appointment(appointments::BookAppointmentRequest {
                        parent: clinic,
                        appointment: Some(appointments::Appointment {
                            patient,
                            provider,
                            start_time: Some(topsmile_kit::time::to_proto(at)),
                            appointment_type: ["check-up", "cleaning", "filling", "root canal"]
                                [j % 4]
                                .into(),
                            ..Default::default()
                        }),
                        request_id: format!("seed-appointment-{i}-{j}"),
                    })
                    .await
                    .with_context(|| format!("appointment {j} of clinic {i}"))?
                    .into_inner()
                    .appointment
                    .context("no appointment answered")?;
                let step = match j % 10 {
                    0 => client
                        .cancel_appointment(appointments::CancelAppointmentRequest {
                            name: visit.name,
                            reason: "seed: patient called".into(),
                            etag: String::new(),
                        })
                        .await
                        .map(drop),
                    1 => client
                        .confirm_appointment(appointments::ConfirmAppointmentRequest {
                            name: visit.name,
                            etag: String::new(),
                        })
                        .await
                        .map(drop),
                    _ => Ok(()),
                };
                settle(step, &[Code::FailedPrecondition], "an appointment step").map(drop)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .inspect(|_| {
            count();
            bars.tick(APPOINTMENTS);
        })
        .collect()
        .await;
    booked.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok(clinic)
}
