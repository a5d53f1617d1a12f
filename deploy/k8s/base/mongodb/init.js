// Idempotent set-up of the replica set and the services' user. Members come from
// MONGODB_MEMBERS ("host:port,host:port,..."); credentials from the environment.
const members = process.env.MONGODB_MEMBERS.split(",");
const first = members[0];
const root = `mongodb://${encodeURIComponent(process.env.ROOT_USERNAME)}:` +
  `${encodeURIComponent(process.env.ROOT_PASSWORD)}@${first}/admin?directConnection=true`;
const conn = new Mongo(root);
const admin = conn.getDB("admin");

let initiated = true;
try {
  admin.runCommand({ replSetGetStatus: 1 }).ok || (initiated = false);
} catch (e) {
  initiated = false;
}
if (!initiated) {
  const config = {
    _id: "rs0",
    members: members.map((host, i) => ({ _id: i, host })),
  };
  const answer = admin.runCommand({ replSetInitiate: config });
  if (!answer.ok && answer.codeName !== "AlreadyInitialized") {
    throw new Error(`replSetInitiate: ${JSON.stringify(answer)}`);
  }
}

// Wait for a primary, then make the user on it.
const set = `mongodb://${encodeURIComponent(process.env.ROOT_USERNAME)}:` +
  `${encodeURIComponent(process.env.ROOT_PASSWORD)}@${members.join(",")}/admin?replicaSet=rs0`;
let app = null;
for (let i = 0; i < 60 && app === null; i++) {
  try {
    app = new Mongo(set).getDB("topsmile");
    app.runCommand({ ping: 1 });
  } catch (e) {
    app = null;
    sleep(2000);
  }
}
if (app === null) {
  throw new Error("no primary after two minutes");
}
if (app.getUser("topsmile") === null) {
  app.createUser({
    user: "topsmile",
    pwd: process.env.APP_PASSWORD,
    roles: [{ role: "readWrite", db: "topsmile" }],
    writeConcern: { w: "majority" },
  });
}
print("replica set rs0 ready; user topsmile present");
