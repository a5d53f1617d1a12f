//! Every public method, fed what an attacker or a broken client would send: request
//! messages built from the contracts' descriptors with random field values (resource
//! names of this clinic, of another, malformed and huge; page tokens that were never
//! issued; impossible times, enums and masks), those messages' bytes mutated, and plain
//! random bytes. Through the gateway and straight at the owning service, no call may
//! fail the server's way (INTERNAL, UNKNOWN, UNAVAILABLE: a panic, a bug, a crash) or
//! hang (DEADLINE_EXCEEDED).

mod support;

use std::time::Duration;

use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value,
};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use support::{ClinicStaff, RawCodec, TestSuite, mongo_store};
use topsmile_kit::{policy::PolicyTable, store::StoreChoice};
use topsmile_proto::FILE_DESCRIPTOR_SET;

/// A fuzzing target: what to call, and the strings worth trying in it.
struct World {
    methods: Vec<(String, String, MessageDescriptor)>,
    strings: Vec<String>,
    tokens: Vec<String>,
}

impl World {
    fn new(staff: &ClinicStaff, other: &ClinicStaff, root: String) -> Self {
        let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
        let table = PolicyTable::builtin().unwrap();
        let mut methods: Vec<_> = table
            .methods()
            .filter(|m| !m.is_internal())
            .filter_map(|m| {
                let (service, method) = m.path.trim_start_matches('/').split_once('/')?;
                let input = pool
                    .get_service_by_name(service)?
                    .methods()
                    .find(|x| x.name() == method)?
                    .input();
                Some((m.path.clone(), m.area.clone(), input))
            })
            .collect();
        methods.sort_by(|a, b| a.0.cmp(&b.0));
        let clinic = staff.clinic.name.clone();
        let strings = vec![
            String::new(),
            clinic.clone(),
            other.clinic.name.clone(),
            format!("{clinic}/patients/0190a0f0-0000-7000-8000-000000000000"),
            format!("{clinic}/providers/not-a-uuid"),
            format!("{clinic}/appointments/../../clinics/x"),
            format!(
                "{}/users/{}",
                other.clinic.name, "0190a0f0-0000-7000-8000-000000000001"
            ),
            staff.admin_name.clone(),
            format!("{clinic}/patients/-"),
            "clinics/*".into(),
            "clinics//patients".into(),
            "clinics/\u{0}".into(),
            "José Álvarez 🦷".into(),
            "a".repeat(70_000),
            "x".repeat(300),
            "ana@example.com".into(),
            "not an email".into(),
            "America/Sao_Paulo".into(),
            "Mars/Phobos".into(),
            "2026-13-45T99:00:00Z".into(),
            "eyJjbGluaWMiOiIqIn0".into(),
            "bm90IGEgdG9rZW4".into(),
            "%%%".into(),
            "display_name,time_zone".into(),
            "*".into(),
            "patient.medical_history.allergies".into(),
        ];
        Self {
            methods,
            strings,
            tokens: vec![
                staff.admin.clone(),
                staff.staff.clone(),
                staff.provider.clone(),
                root,
            ],
        }
    }
}

/// A random value of `field`'s type (`depth` bounds nesting).
fn value(
    field: &FieldDescriptor,
    kind: &Kind,
    rng: &mut StdRng,
    world: &World,
    depth: u32,
) -> Value {
    match kind {
        Kind::String => Value::String(if rng.gen_bool(0.8) {
            world.strings.choose(rng).cloned().unwrap_or_default()
        } else {
            (0..rng.gen_range(0..40))
                .map(|_| char::from(rng.gen_range(0x20u8..0x7f)))
                .collect()
        }),
        Kind::Bytes => Value::Bytes(
            (0..rng.gen_range(0..64))
                .map(|_| rng.r#gen::<u8>())
                .collect::<Vec<_>>()
                .into(),
        ),
        Kind::Bool => Value::Bool(rng.r#gen()),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(
            *[0, 1, -1, 5, 60, 1000, i32::MAX, i32::MIN]
                .choose(rng)
                .unwrap_or(&0),
        ),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(
            *[0, 1, -1, 1_800_000_000, 253_402_300_800, i64::MAX, i64::MIN]
                .choose(rng)
                .unwrap_or(&0),
        ),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(rng.r#gen()),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(rng.r#gen()),
        Kind::Float => Value::F32(
            *[0.0, -1.0, f32::NAN, f32::INFINITY]
                .choose(rng)
                .unwrap_or(&0.0),
        ),
        Kind::Double => Value::F64(*[0.0, -1.0, f64::NAN, 1e300].choose(rng).unwrap_or(&0.0)),
        Kind::Enum(e) => Value::EnumNumber(if rng.gen_bool(0.8) {
            e.values()
                .collect::<Vec<_>>()
                .choose(rng)
                .map_or(0, |v| v.number())
        } else {
            rng.gen_range(-3..100)
        }),
        Kind::Message(m) => Value::Message(message(m, rng, world, depth + 1)),
    }
    .or_default_for(field)
}

trait OrDefault {
    fn or_default_for(self, field: &FieldDescriptor) -> Value;
}

impl OrDefault for Value {
    fn or_default_for(self, field: &FieldDescriptor) -> Value {
        if self.is_valid_for_field(field) {
            self
        } else {
            Value::default_value_for_field(field)
        }
    }
}

/// A message of type `descriptor` with a random selection of fields set randomly.
fn message(
    descriptor: &MessageDescriptor,
    rng: &mut StdRng,
    world: &World,
    depth: u32,
) -> DynamicMessage {
    let mut message = DynamicMessage::new(descriptor.clone());
    if depth > 3 {
        return message;
    }
    for field in descriptor.fields() {
        if !rng.gen_bool(0.6) {
            continue;
        }
        let kind = field.kind();
        let v = if field.is_map() {
            let Kind::Message(entry) = &kind else {
                continue;
            };
            let (key_field, value_field) =
                (entry.map_entry_key_field(), entry.map_entry_value_field());
            let mut map = std::collections::HashMap::new();
            for _ in 0..rng.gen_range(0..3) {
                let key = match value(&key_field, &key_field.kind(), rng, world, depth) {
                    Value::String(s) => MapKey::String(s),
                    Value::I32(i) => MapKey::I32(i),
                    Value::I64(i) => MapKey::I64(i),
                    Value::Bool(b) => MapKey::Bool(b),
                    _ => continue,
                };
                map.insert(
                    key,
                    value(&value_field, &value_field.kind(), rng, world, depth),
                );
            }
            Value::Map(map)
        } else if field.is_list() {
            Value::List(
                (0..rng.gen_range(0..4))
                    .map(|_| value(&field, &kind, rng, world, depth))
                    .collect(),
            )
        } else {
            value(&field, &kind, rng, world, depth)
        };
        if v.is_valid_for_field(&field) {
            message.set_field(&field, v);
        }
    }
    message
}

/// The bytes of one fuzzed request to `input`, from `seed`: a random message, that
/// message mutated, or noise.
fn request_bytes(input: &MessageDescriptor, seed: u64, world: &World) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut bytes = message(input, &mut rng, world, 0).encode_to_vec();
    match rng.gen_range(0..4) {
        0 | 1 => bytes,
        2 => {
            // Flip, cut, or extend.
            for _ in 0..rng.gen_range(1..6) {
                if bytes.is_empty() {
                    break;
                }
                let at = rng.gen_range(0..bytes.len());
                bytes[at] = rng.r#gen();
            }
            if rng.gen_bool(0.3) {
                bytes.truncate(rng.gen_range(0..=bytes.len()));
            }
            if rng.gen_bool(0.3) {
                bytes.extend((0..rng.gen_range(1..16)).map(|_| rng.r#gen::<u8>()));
            }
            bytes
        }
        _ => (0..rng.gen_range(0..96))
            .map(|_| rng.r#gen::<u8>())
            .collect(),
    }
}

/// Codes that mean the server, not the request, went wrong.
const SERVER_FAULTS: &[tonic::Code] = &[
    tonic::Code::Internal,
    tonic::Code::Unknown,
    tonic::Code::Unavailable,
    tonic::Code::DataLoss,
    tonic::Code::DeadlineExceeded,
];

async fn send(
    channel: &tonic::transport::Channel,
    path: &str,
    token: &str,
    bytes: Vec<u8>,
) -> tonic::Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    if grpc.ready().await.is_err() {
        return tonic::Code::Unavailable;
    }
    let mut req = tonic::Request::new(bytes::Bytes::from(bytes));
    req.set_timeout(Duration::from_secs(20));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let Ok(path) = tonic::codegen::http::uri::PathAndQuery::try_from(path.to_owned()) else {
        return tonic::Code::Internal;
    };
    match tokio::time::timeout(Duration::from_secs(30), grpc.unary(req, path, RawCodec)).await {
        Ok(Ok(_)) => tonic::Code::Ok,
        Ok(Err(status)) => status.code(),
        Err(_) => tonic::Code::DeadlineExceeded,
    }
}

fn fuzz_every_public_method(store: Option<StoreChoice>, cases: u32) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (suite, world) = runtime.block_on(async {
        let suite = match store {
            Some(store) => TestSuite::start_on(store).await,
            None => TestSuite::start().await,
        };
        let staff = suite.clinic_with_staff("Fuzzed").await;
        let other = suite.clinic_with_staff("Bystander").await;
        let world = World::new(&staff, &other, suite.root_token().await);
        (suite, world)
    });
    let gateway = runtime.block_on(suite.channel());
    let direct: std::collections::HashMap<String, tonic::transport::Channel> = suite
        .suite
        .services
        .iter()
        .map(|(area, addr)| {
            (
                (*area).to_owned(),
                runtime.block_on(support::connect(*addr)),
            )
        })
        .collect();

    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<String, usize>::new());
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(
        &(0..world.methods.len(), any::<u64>(), 0..world.tokens.len()),
        |(method, seed, token)| {
            let (path, area, input) = &world.methods[method];
            let bytes = request_bytes(input, seed, &world);
            for (through, channel) in [("gateway", &gateway), ("service", &direct[area])] {
                let code =
                    runtime.block_on(send(channel, path, &world.tokens[token], bytes.clone()));
                if let Ok(mut seen) = seen.lock() {
                    *seen.entry(format!("{code:?}")).or_default() += 1;
                }
                prop_assert!(
                    !SERVER_FAULTS.contains(&code),
                    "{path} through the {through} answered {code:?} to seed {seed}"
                );
            }
            Ok(())
        },
    );
    runtime.block_on(suite.stop());
    if let Err(e) = outcome {
        panic!("{e}");
    }
    // The requests got past the door: handlers judged them, and some succeeded (dozens
    // per run; which other verdicts appear varies with the random inputs).
    let seen = seen.into_inner().unwrap_or_default();
    eprintln!("answers: {seen:?}");
    for code in ["Ok", "InvalidArgument"] {
        assert!(
            seen.get(code).is_some_and(|n| *n > 0),
            "no {code} among {seen:?}"
        );
    }
}

#[test]
fn no_request_makes_a_server_fail_or_hang() {
    fuzz_every_public_method(None, 1500);
}

#[test]
fn no_request_makes_a_server_fail_or_hang_on_mongodb() {
    if let Some(store) = mongo_store("fuzz_on_mongodb") {
        fuzz_every_public_method(Some(store), 500);
    }
}
