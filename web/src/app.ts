// The booking page: a member of a clinic's staff signs in, sees a provider's free
// slots for a day and books one for a patient. Every call goes to the TopSmile gateway
// over gRPC-Web, through the client generated from proto/ (src/gen, `npm run build`).
//
// What to show comes from the page's query: `gateway` (the gateway's URL), `clinic`,
// `provider` and `patient` (resource names), and `day` (YYYY-MM-DD, UTC).

import { createClient, ConnectError, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { AuthService } from "./gen/topsmile/identity/v1/auth_pb.js";
import { AppointmentService, type Slot } from "./gen/topsmile/appointments/v1/appointment_pb.js";

const query = new URLSearchParams(location.search);
const need = (key: string): string => {
  const value = query.get(key);
  if (!value) throw new Error(`the page needs ?${key}=`);
  return value;
};

let token = "";
// Every call but sign-in carries the staff member's token.
const bearer: Interceptor = (next) => async (req) => {
  if (token) req.header.set("authorization", `Bearer ${token}`);
  return next(req);
};
const transport = createGrpcWebTransport({ baseUrl: need("gateway"), interceptors: [bearer] });
const auth = createClient(AuthService, transport);
const appointments = createClient(AppointmentService, transport);

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

function show(error: unknown) {
  const text = error instanceof ConnectError ? `${error.code}: ${error.rawMessage}` : String(error);
  $("error").textContent = text;
}

async function showDay() {
  const day = need("day");
  const start = new Date(`${day}T00:00:00Z`);
  const end = new Date(start.getTime() + 24 * 60 * 60 * 1000);
  const found = await appointments.findAvailableSlots({
    parent: need("clinic"),
    provider: need("provider"),
    startTime: timestampFromDate(start),
    endTime: timestampFromDate(end),
  });
  $("day-title").textContent = `Free on ${day}: ${found.slots.length}`;
  const list = $("slots");
  list.replaceChildren(...found.slots.map(slotButton));
  $("day").hidden = false;
}

function slotButton(slot: Slot): HTMLButtonElement {
  const button = document.createElement("button");
  const start = slot.startTime ? timestampDate(slot.startTime) : new Date(NaN);
  button.className = "slot";
  button.dataset.start = start.toISOString();
  button.textContent = start.toISOString().slice(11, 16);
  button.addEventListener("click", () => book(slot).catch(show));
  return button;
}

async function book(slot: Slot) {
  const booked = await appointments.bookAppointment({
    parent: need("clinic"),
    appointment: {
      patient: need("patient"),
      provider: slot.provider,
      startTime: slot.startTime,
    },
    requestId: crypto.randomUUID(),
  });
  $("booked").textContent = booked.appointment?.name ?? "";
}

$("sign-in").addEventListener("submit", (event) => {
  event.preventDefault();
  $("error").textContent = "";
  auth
    .login({ email: $<HTMLInputElement>("email").value, password: $<HTMLInputElement>("password").value })
    .then((signedIn) => {
      token = signedIn.accessToken;
      return showDay();
    })
    .catch(show);
});
