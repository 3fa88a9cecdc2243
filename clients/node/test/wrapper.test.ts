/**
 * LedgerClient against an in-process @grpc/grpc-js fake of ReservationService: retries keep
 * the request_id and correlation id, errors carry the decoded google.rpc details, deadlines
 * end a call. No ledger needed: `node --test dist/test/wrapper.test.js`.
 */

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import * as grpc from "@grpc/grpc-js";

import { LedgerClient, LedgerError } from "../src/client";
import { Any } from "../src/gen/google/protobuf/any";
import { ErrorInfo, PreconditionFailure, RetryInfo } from "../src/gen/google/rpc/error_details";
import { Status } from "../src/gen/google/rpc/status";
import { Reservation, ReservationStatus } from "../src/gen/inventory/ledger/v1/reservation";
import {
  ReservationServiceServer,
  ReservationServiceService,
} from "../src/gen/inventory/ledger/v1/reservation_service";

interface Seen {
  method: string;
  requestId: string;
  correlationId: string;
  authorization: string;
}

const seen: Seen[] = [];
let server: grpc.Server;
let address: string;

function pack(typeName: string, value: Uint8Array): Any {
  return Any.fromPartial({ typeUrl: `type.googleapis.com/${typeName}`, value: Buffer.from(value) });
}

function failure(code: grpc.status, message: string, details: Any[]): Partial<grpc.ServiceError> {
  const metadata = new grpc.Metadata();
  const status = Status.encode(Status.fromPartial({ code, message, details })).finish();
  metadata.set("grpc-status-details-bin", Buffer.from(status));
  return { code, details: message, metadata };
}

function record(method: string, requestId: string, call: grpc.ServerUnaryCall<unknown, unknown>) {
  const header = (key: string) => String(call.metadata.get(key)[0] ?? "");
  seen.push({
    method,
    requestId,
    correlationId: header("x-correlation-id"),
    authorization: header("authorization"),
  });
  return seen.filter((entry) => entry.method === method).length;
}

const retryInfo = pack(
  "google.rpc.RetryInfo",
  RetryInfo.encode({ retryDelay: { seconds: 0, nanos: 20_000_000 } }).finish(),
);

const fake: ReservationServiceServer = {
  reserve(call, callback) {
    const attempt = record("reserve", call.request.requestId, call);
    if (attempt === 1) {
      callback(failure(grpc.status.UNAVAILABLE, "store unavailable", [retryInfo]), null);
    } else if (attempt === 2) {
      callback({ code: grpc.status.ABORTED, details: "concurrent update" }, null);
    } else {
      callback(
        null,
        Reservation.fromPartial({
          reservationId: "r-1",
          channel: call.request.channel,
          status: ReservationStatus.RESERVATION_STATUS_ACTIVE,
          lines: call.request.lines.map(({ sku, qty, lotId, minExpiresAt }) => ({
            sku,
            qty,
            locationId: "DC-1",
            shipped: 0,
            // The lot terms come back as the line's lot: a test sees both directions.
            lots: lotId ? [{ lotId, qty, expiresAt: minExpiresAt }] : [],
          })),
          ledgerPosition: 42,
        }),
      );
    }
  },
  commit(call, callback) {
    record("commit", call.request.requestId, call);
    const info = ErrorInfo.fromPartial({
      reason: "ILLEGAL_TRANSITION",
      domain: "inventory.ledger.v1",
      metadata: { reservationId: call.request.reservationId, status: "RELEASED" },
    });
    const violation = PreconditionFailure.fromPartial({
      violations: [{ type: "RESERVATION_STATUS", subject: call.request.reservationId }],
    });
    callback(
      failure(grpc.status.FAILED_PRECONDITION, "commit is not allowed in status RELEASED", [
        pack("google.rpc.ErrorInfo", ErrorInfo.encode(info).finish()),
        pack("google.rpc.PreconditionFailure", PreconditionFailure.encode(violation).finish()),
        pack("example.Unknown", new Uint8Array([1, 2, 3])),
      ]),
      null,
    );
  },
  release(call) {
    record("release", call.request.requestId, call); // never answers: the deadline ends it
  },
  getReservation(call, callback) {
    record("getReservation", "", call);
    callback({ code: grpc.status.UNAVAILABLE, details: "down" }, null);
  },
  listReservations(_call, callback) {
    callback({ code: grpc.status.UNIMPLEMENTED, details: "not in the fake" }, null);
  },
};

before(async () => {
  server = new grpc.Server();
  server.addService(ReservationServiceService, fake);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, bound) =>
      error ? reject(error) : resolve(bound),
    ),
  );
  address = `127.0.0.1:${port}`;
});

after(() => {
  server.forceShutdown();
});

function client(): LedgerClient {
  return new LedgerClient({
    address,
    token: "t0k3n",
    deadlineMs: 5000,
    retry: { maxAttempts: 4, initialBackoffMs: 5, maxBackoffMs: 20 },
  });
}

test("retries UNAVAILABLE and ABORTED with the same request_id and correlation id", async () => {
  const ledger = client();
  try {
    const reservation = await ledger.reserve(
      { channel: "web", lines: [{ sku: "SKU-1", qty: 2 }] },
      { correlationId: "checkout-42" },
    );
    assert.equal(reservation.reservationId, "r-1");
    assert.equal(reservation.status, ReservationStatus.RESERVATION_STATUS_ACTIVE);
    assert.equal(reservation.lines[0].qty, 2);
    const attempts = seen.filter((entry) => entry.method === "reserve");
    assert.equal(attempts.length, 3);
    assert.equal(new Set(attempts.map((entry) => entry.requestId)).size, 1);
    assert.match(attempts[0].requestId, /^[0-9a-f-]{36}$/);
    assert.deepEqual(
      attempts.map((entry) => entry.correlationId),
      ["checkout-42", "checkout-42", "checkout-42"],
    );
    assert.deepEqual(
      attempts.map((entry) => entry.authorization),
      ["Bearer t0k3n", "Bearer t0k3n", "Bearer t0k3n"],
    );
  } finally {
    ledger.close();
  }
});

test("reserve sends a line's lot terms and decodes the line's lots", async () => {
  const ledger = client();
  try {
    const floor = new Date("2027-01-10T00:00:00Z");
    const reservation = await ledger.reserve({
      channel: "web",
      lines: [
        { sku: "YOG-1", qty: 3, lotId: "L7", minExpiresAt: floor },
        { sku: "SKU-1", qty: 1 },
      ],
    });
    assert.deepEqual(reservation.lines[0].lots, [{ lotId: "L7", qty: 3, expiresAt: floor }]);
    assert.deepEqual(reservation.lines[1].lots, []);
  } finally {
    ledger.close();
  }
});

test("a given request_id is sent as is; each call without one gets a fresh one", async () => {
  const ledger = client();
  try {
    await assert.rejects(ledger.commit("r-9", { requestId: "mine-1" }), LedgerError);
    await assert.rejects(ledger.commit("r-9"), LedgerError);
    await assert.rejects(ledger.commit("r-9"), LedgerError);
    const ids = seen.filter((entry) => entry.method === "commit").map((entry) => entry.requestId);
    assert.equal(ids[0], "mine-1");
    assert.equal(new Set(ids).size, 3);
  } finally {
    ledger.close();
  }
});

test("errors carry the code and the decoded google.rpc details, and are not retried", async () => {
  const ledger = client();
  try {
    const before = seen.filter((entry) => entry.method === "commit").length;
    const error = await ledger.commit("r-7").then(
      () => assert.fail("commit should fail"),
      (caught: unknown) => caught,
    );
    assert.ok(error instanceof LedgerError);
    assert.equal(error.code, grpc.status.FAILED_PRECONDITION);
    assert.equal(error.codeName, "FAILED_PRECONDITION");
    assert.equal(error.reason, "ILLEGAL_TRANSITION");
    assert.equal(error.domain, "inventory.ledger.v1");
    assert.deepEqual(error.metadata, { reservationId: "r-7", status: "RELEASED" });
    assert.equal(error.preconditionFailure?.violations[0].subject, "r-7");
    assert.equal(error.details.length, 3);
    assert.equal(error.retryable, false);
    assert.equal(error.attempts, 1);
    assert.match(error.message, /^FAILED_PRECONDITION: commit is not allowed/);
    assert.match(error.correlationId, /^[0-9a-f-]{36}$/);
    assert.equal(seen.filter((entry) => entry.method === "commit").length, before + 1);
  } finally {
    ledger.close();
  }
});

test("retries stop after maxAttempts with the last error", async () => {
  const ledger = new LedgerClient({
    address,
    retry: { maxAttempts: 3, initialBackoffMs: 1, maxBackoffMs: 2 },
  });
  try {
    const error = await ledger.getReservation("r-1").catch((caught: unknown) => caught);
    assert.ok(error instanceof LedgerError);
    assert.equal(error.code, grpc.status.UNAVAILABLE);
    assert.equal(error.attempts, 3);
    assert.equal(error.reason, undefined);
    assert.equal(seen.filter((entry) => entry.method === "getReservation").length, 3);
    const authorization = seen.find((entry) => entry.method === "getReservation")?.authorization;
    assert.equal(authorization, "", "no token configured: no authorization header");
  } finally {
    ledger.close();
  }
});

test("every call has a deadline", async () => {
  const ledger = client();
  try {
    const started = Date.now();
    const error = await ledger.release("r-1", { deadlineMs: 300 }).catch((caught) => caught);
    assert.ok(error instanceof LedgerError);
    assert.equal(error.code, grpc.status.DEADLINE_EXCEEDED);
    assert.ok(Date.now() - started < 3000, "the call ended at its deadline");
  } finally {
    ledger.close();
  }
});
