/**
 * @inventory-ledger/client: the typed LedgerClient, and the generated stubs of
 * inventory.ledger.v1 (one namespace per proto file; deep imports of ./gen/... work too).
 */

export * from "./client";

export {
  EntryType,
  LedgerEntry,
  LotLocation,
  TraceLotResponse,
} from "./gen/inventory/ledger/v1/audit_service";
export {
  Availability,
  Consistency,
  LocationAvailability,
} from "./gen/inventory/ledger/v1/availability";
export { ChannelPolicy } from "./gen/inventory/ledger/v1/channel_policy";
export { ItemPolicy, ItemTracking } from "./gen/inventory/ledger/v1/item_policy";
export {
  Disposition,
  FromBucket,
  Movement,
  MovementType,
} from "./gen/inventory/ledger/v1/movement";
export {
  MovementOutcome,
  MovementResult,
  RecordMovementsResponse,
} from "./gen/inventory/ledger/v1/movement_service";
export { Hold, LotBuckets, Position } from "./gen/inventory/ledger/v1/position";
export {
  LotHold,
  Reservation,
  ReservationLine,
  ReservationStatus,
} from "./gen/inventory/ledger/v1/reservation";
export { SerialStatus, SerialStep, SerialUnit } from "./gen/inventory/ledger/v1/serial";

export * as auditService from "./gen/inventory/ledger/v1/audit_service";
export * as availability from "./gen/inventory/ledger/v1/availability";
export * as channelPolicy from "./gen/inventory/ledger/v1/channel_policy";
export * as itemPolicy from "./gen/inventory/ledger/v1/item_policy";
export * as movement from "./gen/inventory/ledger/v1/movement";
export * as movementService from "./gen/inventory/ledger/v1/movement_service";
export * as policyService from "./gen/inventory/ledger/v1/policy_service";
export * as position from "./gen/inventory/ledger/v1/position";
export * as queryService from "./gen/inventory/ledger/v1/query_service";
export * as reservation from "./gen/inventory/ledger/v1/reservation";
export * as reservationService from "./gen/inventory/ledger/v1/reservation_service";
export * as serial from "./gen/inventory/ledger/v1/serial";
export * as errorDetails from "./gen/google/rpc/error_details";
export * as rpcStatus from "./gen/google/rpc/status";
