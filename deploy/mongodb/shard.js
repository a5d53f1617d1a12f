// The sharding plan, as a mongosh script: run it once against a mongos of a sharded
// cluster, as a user with clusterAdmin, after the services have created their indexes
// (they do at start-up). Re-running it is harmless: collections already sharded are
// skipped. See README.md beside it for why each key is what it is.
//
//   mongosh "mongodb://<admin>@<mongos>/admin" deploy/mongodb/shard.js
const database = process.env.TOPSMILE_MONGODB_DATABASE || "topsmile";

// Every key starts with clinicId: every query the services send names it, so each is
// routed to the shards of one clinic. A unique index must start with the shard key,
// which is why collections with per-clinic unique keys (request ids, emails, a
// provider's user) are sharded on clinicId alone.
const plan = [
  ["patients", { clinicId: 1 }],
  ["providers", { clinicId: 1 }],
  ["appointments", { clinicId: 1 }],
  ["medicalHistory", { clinicId: 1, patientId: 1 }],
  ["medicalHistoryRevisions", { clinicId: 1, patientId: 1 }],
  ["auditEvents", { clinicId: 1, _id: 1 }],
  ["appointmentClaims", { clinicId: 1, resource: 1, granule: 1 }],
  ["signInLocks", { clinicId: 1, account: 1 }],
  ["sessions", { clinicId: 1 }],
  ["patientBookingDays", { clinicId: 1, patientId: 1 }],
];
// Not sharded: clinics (the tenants themselves, small), users (staff sign in by email
// without naming a clinic: a global lookup; small), refreshTokens (found by hash).

sh.enableSharding(database);
const sharded = new Set(
  db.getSiblingDB("config").collections
    .find({ _id: { $regex: `^${database}\\.` }, dropped: { $ne: true } })
    .toArray()
    .map((c) => c._id),
);
for (const [collection, key] of plan) {
  const ns = `${database}.${collection}`;
  if (sharded.has(ns)) {
    print(`${ns}: already sharded`);
    continue;
  }
  const answer = sh.shardCollection(ns, key);
  print(`${ns}: sharded on ${JSON.stringify(key)}: ${JSON.stringify(answer.ok)}`);
}

// Keeping a region's clinics in that region: tag each region's shards, then pin each
// of its clinics. Call zoneClinic(id, "sa-east") for every clinic of a region (ids are
// the `{clinic}` of `clinics/{clinic}`).
globalThis.zoneClinic = function (clinicId, zone) {
  for (const [collection, key] of plan) {
    const min = {};
    const max = {};
    for (const field of Object.keys(key)) {
      min[field] = field === "clinicId" ? clinicId : MinKey;
      max[field] = field === "clinicId" ? clinicId : MaxKey;
    }
    // [clinicId with every other field at MinKey, clinicId with MaxKey): one clinic.
    sh.updateZoneKeyRange(`${database}.${collection}`, min, max, zone);
  }
};
