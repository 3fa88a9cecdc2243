/**
 * LedgerClient against a running ledger: receive stock, reserve, read availability and the
 * position, commit, release, and the typed errors of a short and an invalid reservation.
 *
 *   LEDGER_ADDRESS=127.0.0.1:50051 node --test dist/test/live.test.js
 *
 * Optional: LEDGER_TOKEN (bearer token), LEDGER_TEST_SKU / LEDGER_TEST_LOCATION (default: a
 * fresh SKU at DC-NODE, so reruns against one server do not collide), LEDGER_TEST_CHANNEL
 * (default web). Ends with on_hand 12, reserved 5, allocated 3, available 4 for the SKU.
 */

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, test } from "node:test";

import * as grpc from "@grpc/grpc-js";

import {
  Consistency,
  EntryType,
  ItemTracking,
  LedgerClient,
  LedgerError,
  MovementOutcome,
  MovementType,
  Reservation,
  ReservationStatus,
  SerialStatus,
} from "../src/index";

const address = process.env.LEDGER_ADDRESS;
if (!address) {
  throw new Error("set LEDGER_ADDRESS=host:port of a running ledger");
}
const sku = process.env.LEDGER_TEST_SKU || `NODE-${randomUUID().slice(0, 8)}`;
const locationId = process.env.LEDGER_TEST_LOCATION || "DC-NODE";
const channel = process.env.LEDGER_TEST_CHANNEL || "web";

const ledger = new LedgerClient({
  address,
  token: process.env.LEDGER_TOKEN || undefined,
  deadlineMs: 10_000,
});
after(() => ledger.close());

let held: Reservation;

test("RecordMovements records a receipt once", async () => {
  const receipt = {
    messageId: `node-${randomUUID()}`,
    source: "node-client-test",
    type: MovementType.MOVEMENT_TYPE_RECEIPT,
    sku,
    locationId,
    qty: 12,
  };
  const first = await ledger.recordMovements([receipt]);
  assert.equal(first.results.length, 1);
  assert.equal(first.results[0].outcome, MovementOutcome.MOVEMENT_OUTCOME_RECORDED);
  assert.ok(first.results[0].ledgerPosition > 0);
  const again = await ledger.recordMovements([receipt]);
  assert.equal(again.results[0].outcome, MovementOutcome.MOVEMENT_OUTCOME_DUPLICATE);
});

test("Reserve holds stock and GetAvailability reads it back", async () => {
  held = await ledger.reserve(
    { channel, orderRef: "node-order-1", lines: [{ sku, locationId, qty: 5 }], ttlSeconds: 900 },
    { correlationId: `node-test-${randomUUID().slice(0, 8)}` },
  );
  assert.ok(held.reservationId);
  assert.equal(held.status, ReservationStatus.RESERVATION_STATUS_ACTIVE);
  assert.equal(held.channel, channel);
  assert.deepEqual(
    held.lines.map((line) => [line.sku, line.locationId, line.qty]),
    [[sku, locationId, 5]],
  );
  assert.ok(held.expiresAt instanceof Date && held.expiresAt.getTime() > Date.now());

  // Read your write: wait until the projection has applied the reservation.
  const availability = await ledger.getAvailability({
    sku,
    channel,
    minPosition: held.ledgerPosition,
  });
  assert.equal(availability.sku, sku);
  assert.equal(availability.channelAvailable, 7);
  assert.ok(availability.projectionPosition >= held.ledgerPosition);
  const strong = await ledger.getAvailability({
    sku,
    channel,
    consistency: Consistency.CONSISTENCY_STRONG,
  });
  assert.equal(strong.channelAvailable, 7);

  const position = await ledger.getPosition({ sku, locationId, includeHolds: true });
  assert.equal(position.onHand, 12);
  assert.equal(position.reserved, 5);
  assert.equal(position.available, 7);
  assert.deepEqual(
    position.holds.map((hold) => [hold.reservationId, hold.qty]),
    [[held.reservationId, 5]],
  );
});

test("a reserve retried with its request_id reserves once; commit and release", async () => {
  const requestId = randomUUID();
  const input = { channel, orderRef: "node-order-2", lines: [{ sku, locationId, qty: 3 }] };
  const first = await ledger.reserve(input, { requestId });
  const second = await ledger.reserve(input, { requestId });
  assert.equal(second.reservationId, first.reservationId);
  assert.equal((await ledger.getPosition({ sku, locationId })).reserved, 8);

  const committed = await ledger.commit(first.reservationId, { channel });
  assert.equal(committed.status, ReservationStatus.RESERVATION_STATUS_COMMITTED);

  const extra = await ledger.reserve({ channel, lines: [{ sku, locationId, qty: 1 }] });
  const released = await ledger.release(extra.reservationId);
  assert.equal(released.status, ReservationStatus.RESERVATION_STATUS_RELEASED);
  const fetched = await ledger.getReservation(extra.reservationId, { channel });
  assert.equal(fetched.status, ReservationStatus.RESERVATION_STATUS_RELEASED);

  const position = await ledger.getPosition({ sku, locationId });
  assert.deepEqual(
    [position.onHand, position.reserved, position.allocated, position.available],
    [12, 5, 3, 4],
  );
});

test("policy answers carry ledgerPosition: minPosition reads them back", async () => {
  // A SKU of its own, so the figures the Python side checks stay as they are.
  const policySku = `${sku}-P`;
  await ledger.recordMovements([
    {
      messageId: `node-${randomUUID()}`,
      source: "node-client-test",
      type: MovementType.MOVEMENT_TYPE_RECEIPT,
      sku: policySku,
      locationId,
      qty: 10,
    },
  ]);
  const requestId = randomUUID();
  const safety = { sku: policySku, locationId, qty: 3 };
  const stocked = await ledger.setSafetyStock(safety, { requestId });
  assert.equal(stocked.safetyStock, 3);
  assert.ok(stocked.ledgerPosition > 0);
  const seen = await ledger.getAvailability({
    sku: policySku,
    channel,
    minPosition: stocked.ledgerPosition,
  });
  assert.equal(seen.channelAvailable, 7);
  // A replayed request_id answers the first write's position.
  const replayed = await ledger.setSafetyStock(safety, { requestId });
  assert.equal(replayed.ledgerPosition, stocked.ledgerPosition);

  const fenced = await ledger.setChannelFence({ sku: policySku, locationId, channel, qty: 2 });
  assert.deepEqual(fenced.fences, { [channel]: 2 });
  assert.ok(fenced.ledgerPosition > stocked.ledgerPosition);
  // The default policy, set explicitly: the channel's figures do not change.
  const policy = await ledger.setChannelPolicy({ channel });
  assert.equal(policy.sharePercent, 100);
  assert.ok(policy.ledgerPosition > fenced.ledgerPosition);
  const after = await ledger.getAvailability({
    sku: policySku,
    channel,
    minPosition: policy.ledgerPosition,
  });
  assert.ok(after.projectionPosition >= policy.ledgerPosition);
  assert.equal(after.channelAvailable, 7);
});

test("item policy: set, replay, read, and a locked change", async () => {
  const itemSku = `${sku}-ITEM`;
  const unknown = await ledger.getItemPolicy(itemSku);
  assert.equal(unknown.tracking, ItemTracking.ITEM_TRACKING_NONE);
  assert.equal(unknown.version, 0);
  const requestId = randomUUID();
  const input = { sku: itemSku, tracking: ItemTracking.ITEM_TRACKING_LOT };
  const set = await ledger.setItemPolicy(input, { requestId });
  assert.equal(set.tracking, ItemTracking.ITEM_TRACKING_LOT);
  assert.ok(set.ledgerPosition > 0);
  const replayed = await ledger.setItemPolicy(input, { requestId });
  assert.equal(replayed.ledgerPosition, set.ledgerPosition);
  assert.equal((await ledger.getItemPolicy(itemSku)).tracking, ItemTracking.ITEM_TRACKING_LOT);
  const error = await ledger
    .setItemPolicy({ sku: itemSku, tracking: ItemTracking.ITEM_TRACKING_NONE })
    .catch((caught: unknown) => caught);
  assert.ok(error instanceof LedgerError, String(error));
  assert.equal(error.code, grpc.status.FAILED_PRECONDITION);
  assert.equal(error.reason, "ITEM_TRACKING_LOCKED");
});

test("traceLot: a lot's entries in ledger order, paged, and its buckets", async () => {
  const lotSku = `${sku}-LOT`;
  await ledger.setItemPolicy({ sku: lotSku, tracking: ItemTracking.ITEM_TRACKING_LOT });
  for (const [type, qty] of [
    [MovementType.MOVEMENT_TYPE_RECEIPT, 7],
    [MovementType.MOVEMENT_TYPE_SHIPMENT, 3],
  ] as const) {
    const moved = await ledger.recordMovements([
      { messageId: randomUUID(), source: "node-client-test", type, sku: lotSku, locationId, qty, lotId: "L1" },
    ]);
    assert.equal(moved.results[0].outcome, MovementOutcome.MOVEMENT_OUTCOME_RECORDED);
  }
  const first = await ledger.traceLot({ sku: lotSku, lotId: "L1", pageSize: 1 });
  const second = await ledger.traceLot({
    sku: lotSku,
    lotId: "L1",
    pageSize: 1,
    pageToken: first.nextPageToken,
  });
  assert.deepEqual(
    [...first.entries, ...second.entries].map((e) => [e.type, e.lotId]),
    [
      [EntryType.ENTRY_TYPE_RECEIPT, "L1"],
      [EntryType.ENTRY_TYPE_SHIPMENT, "L1"],
    ],
  );
  assert.equal(second.nextPageToken, "");
  assert.deepEqual(
    first.locations.map((l) => [l.locationId, l.buckets?.onHand]),
    [[locationId, 4]],
  );
  const before = await ledger.traceLot({ sku: lotSku, lotId: "L1", asOf: new Date("2020-01-01T00:00:00Z") });
  assert.deepEqual([before.entries.length, before.locations.length], [0, 0]);
});

test("getSerial: a unit's status and history, NOT_FOUND for one never seen", async () => {
  const serialSku = `${sku}-SERIAL`;
  await ledger.setItemPolicy({ sku: serialSku, tracking: ItemTracking.ITEM_TRACKING_SERIAL });
  const moved = await ledger.recordMovements([
    {
      messageId: randomUUID(),
      source: "node-client-test",
      type: MovementType.MOVEMENT_TYPE_RECEIPT,
      sku: serialSku,
      locationId,
      qty: 1,
      serialNumbers: ["SN-1"],
    },
  ]);
  assert.equal(moved.results[0].outcome, MovementOutcome.MOVEMENT_OUTCOME_RECORDED);
  const unit = await ledger.getSerial(serialSku, "SN-1");
  assert.deepEqual(
    [unit.status, unit.locationId, unit.bucket],
    [SerialStatus.SERIAL_STATUS_IN_STOCK, locationId, "on_hand"],
  );
  assert.deepEqual(unit.history.map((step) => step.type), ["receipt"]);
  const error = await ledger.getSerial(serialSku, "SN-2").catch((caught: unknown) => caught);
  assert.ok(error instanceof LedgerError, String(error));
  assert.equal(error.code, grpc.status.NOT_FOUND);
  assert.equal(error.reason, "SERIAL_NOT_FOUND");
});

test("a short reservation is a LedgerError with INSUFFICIENT_AVAILABILITY", async () => {
  const error = await ledger
    .reserve({ channel, lines: [{ sku, locationId, qty: 1000 }] })
    .catch((caught: unknown) => caught);
  assert.ok(error instanceof LedgerError, String(error));
  assert.equal(error.code, grpc.status.FAILED_PRECONDITION);
  assert.equal(error.reason, "INSUFFICIENT_AVAILABILITY");
  assert.equal(error.domain, "inventory.ledger.v1");
  assert.equal(error.metadata.channel, channel);
  assert.equal(error.metadata.shortLines, "0");
  assert.equal(error.preconditionFailure?.violations.length, 1);
  assert.equal(error.preconditionFailure?.violations[0].subject, "lines[0]");
  assert.equal(error.attempts, 1);
  assert.equal((await ledger.getPosition({ sku, locationId })).reserved, 5);
});

test("an invalid request is a LedgerError naming the field", async () => {
  const error = await ledger
    .reserve({ channel, lines: [{ sku, locationId, qty: 0 }] })
    .catch((caught: unknown) => caught);
  assert.ok(error instanceof LedgerError, String(error));
  assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
  assert.equal(error.reason, "INVALID_ARGUMENT");
  assert.equal(error.metadata.field, "lines[0].qty");
  assert.equal(error.badRequest?.fieldViolations[0].field, "lines[0].qty");
});
