/**
 * LedgerClient: a small typed wrapper over the generated @grpc/grpc-js stubs in ./gen.
 *
 * What it does for every call:
 * - a deadline (the client's `deadlineMs`, default 10 s, or the call's own), which bounds the
 *   whole call, retries included;
 * - `authorization: Bearer <token>` when a token is configured;
 * - `x-correlation-id`: the caller's, or a fresh UUID, the same on every attempt of the call;
 * - retries on UNAVAILABLE and ABORTED only, with jittered exponential back-off (at least the
 *   server's google.rpc.RetryInfo delay), while the deadline allows;
 * - writes (reserve, commit, release and the PolicyService setters) carry a `request_id`,
 *   generated once per call unless given, and reused on every retry, so the ledger applies
 *   the write once; their answers carry `ledgerPosition`, which `getAvailability` takes as
 *   `minPosition` to read the write back;
 * - failures become a {@link LedgerError} with the gRPC code and the google.rpc details
 *   decoded from `grpc-status-details-bin` (ErrorInfo reason and metadata, BadRequest,
 *   PreconditionFailure, ResourceInfo, RetryInfo).
 *
 * Everything else (WatchAvailability, ListPositions, AuditService, ...) is on the generated
 * stubs; {@link LedgerClient.stubs} shares this client's channel.
 */

import { randomUUID } from "node:crypto";

import * as grpc from "@grpc/grpc-js";

import { Any } from "./gen/google/protobuf/any";
import {
  BadRequest,
  ErrorInfo,
  PreconditionFailure,
  ResourceInfo,
  RetryInfo,
} from "./gen/google/rpc/error_details";
import { Status } from "./gen/google/rpc/status";
import { Availability, Consistency } from "./gen/inventory/ledger/v1/availability";
import {
  AuditServiceClient,
  TraceLotRequest,
  TraceLotResponse,
} from "./gen/inventory/ledger/v1/audit_service";
import { ChannelPolicy } from "./gen/inventory/ledger/v1/channel_policy";
import { ItemPolicy, ItemTracking } from "./gen/inventory/ledger/v1/item_policy";
import { Movement } from "./gen/inventory/ledger/v1/movement";
import {
  MovementServiceClient,
  RecordMovementsRequest,
  RecordMovementsResponse,
} from "./gen/inventory/ledger/v1/movement_service";
import {
  GetItemPolicyRequest,
  PolicyServiceClient,
  SetChannelFenceRequest,
  SetChannelPolicyRequest,
  SetItemPolicyRequest,
  SetSafetyStockRequest,
} from "./gen/inventory/ledger/v1/policy_service";
import { Position } from "./gen/inventory/ledger/v1/position";
import { SerialUnit } from "./gen/inventory/ledger/v1/serial";
import {
  GetAvailabilityRequest,
  GetPositionRequest,
  GetSerialRequest,
  InventoryQueryServiceClient,
} from "./gen/inventory/ledger/v1/query_service";
import { Reservation } from "./gen/inventory/ledger/v1/reservation";
import {
  CommitRequest,
  GetReservationRequest,
  ReleaseRequest,
  ReservationServiceClient,
  ReserveRequest,
} from "./gen/inventory/ledger/v1/reservation_service";

export const CORRELATION_HEADER = "x-correlation-id";
export const STATUS_DETAILS_HEADER = "grpc-status-details-bin";
export const DEFAULT_DEADLINE_MS = 10_000;
/** The codes a call is retried on: the ledger did not (or may not have) applied it. */
export const RETRYABLE_CODES: ReadonlySet<grpc.status> = new Set([
  grpc.status.UNAVAILABLE,
  grpc.status.ABORTED,
]);

export interface TlsOptions {
  /** PEM CA bundle the server's certificate must chain to (default: the system roots). */
  rootCerts?: Buffer;
  /** Mutual TLS: the client's PEM private key ... */
  privateKey?: Buffer;
  /** ... and its PEM certificate chain. */
  certChain?: Buffer;
  /** The name to verify in the server's certificate, when not the address's host. */
  serverName?: string;
}

export interface RetryOptions {
  /** Attempts in all, the first included (default 4; 1 disables retries). */
  maxAttempts?: number;
  /** Back-off before the first retry, doubled per retry (default 100 ms), full jitter. */
  initialBackoffMs?: number;
  /** Upper bound of one back-off (default 2000 ms). */
  maxBackoffMs?: number;
}

export interface LedgerClientOptions {
  /** `host:port` of the ledger's gRPC endpoint. */
  address: string;
  /** Bearer token (sent as `authorization: Bearer <token>` on every call). */
  token?: string;
  /** `true`: TLS with the system roots; an object: TLS (or mutual TLS) with those files. */
  tls?: boolean | TlsOptions;
  /** Channel credentials of your own; wins over `tls`. */
  credentials?: grpc.ChannelCredentials;
  /** Deadline of every call, retries included (default 10 000 ms). */
  deadlineMs?: number;
  retry?: RetryOptions;
  /** Extra @grpc/grpc-js channel options. */
  channelOptions?: grpc.ChannelOptions;
}

export interface CallOptions {
  /** This call's deadline in ms from now (default: the client's `deadlineMs`). */
  deadlineMs?: number;
  /** Sent as `x-correlation-id` (default: a fresh UUID per call, kept across retries). */
  correlationId?: string;
}

export interface WriteOptions extends CallOptions {
  /** Idempotency key (default: a fresh UUID per call, kept across retries). Reuse it to retry
   * a call yourself: the ledger answers a repeated request_id with the first outcome. */
  requestId?: string;
}

export interface ReserveLineInput {
  sku: string;
  qty: number;
  /** Omit to let the ledger pick the location (contract §4.2). */
  locationId?: string;
  /** LOT SKUs: bind exactly this lot; it must cover the whole line. Omit: earliest expiry
   * first. */
  lotId?: string;
  /** LOT SKUs: bind only lots expiring strictly after this instant (or never). */
  minExpiresAt?: Date;
}

export interface ReserveInput {
  channel: string;
  lines: ReserveLineInput[];
  orderRef?: string;
  /** Time to live in seconds (default: the server's). */
  ttlSeconds?: number;
  /** Allow the ledger to split a line without a location across locations. */
  allowSplit?: boolean;
}

export interface ReservationActionOptions extends WriteOptions {
  /** The channel the reservation belongs to (checked by the server when given). */
  channel?: string;
}

export interface AvailabilityInput {
  sku: string;
  channel: string;
  /** EVENTUAL (default) reads the projection; STRONG reads the ledger. */
  consistency?: Consistency;
  /** Wait (within the deadline) until the projection has applied this ledger position,
   * e.g. a Reservation's `ledgerPosition`: read your own writes. */
  minPosition?: number;
  /** Also compute `projectedAvailable` counting inbound transfers expected by then. */
  horizon?: Date;
}

export interface PositionInput {
  sku: string;
  locationId: string;
  includeHolds?: boolean;
}

export interface SafetyStockInput {
  sku: string;
  locationId: string;
  /** Units held back from promising, at least 0. */
  qty: number;
}

export interface ChannelFenceInput extends SafetyStockInput {
  /** The channel the units are ring-fenced for; qty 0 removes the fence. */
  channel: string;
}

export interface ChannelPolicyInput {
  channel: string;
  /** Locations the channel may sell from; empty or omitted: all. */
  eligibleLocationIds?: string[];
  /** Percentage of the eligible stock to publish, 1-100; omitted: 100. */
  sharePercent?: number;
  /** Units held back after the share. */
  buffer?: number;
  /** Upper bound of the published quantity; omitted or 0: unlimited. */
  maxPublish?: number;
}

export interface ItemPolicyInput {
  sku: string;
  /** How the SKU is tracked; ITEM_TRACKING_UNSPECIFIED means NONE. */
  tracking: ItemTracking;
}

/** A recall trace request: the SKU and lot, optionally an instant and paging. */
export interface TraceLotInput {
  sku: string;
  lotId: string;
  asOf?: Date;
  pageSize?: number;
  pageToken?: string;
}

/** A movement: the required fields, and any others of {@link Movement} (a tracked SKU's
 * `lotId`, `expiresAt` or `serialNumbers` among them). */
export type MovementInput = Pick<Movement, "messageId" | "source" | "type" | "sku" | "locationId"> &
  Partial<Movement>;

/** A failed call: the gRPC status and the google.rpc details the ledger attached. */
export class LedgerError extends Error {
  /** The gRPC status code (`grpc.status.FAILED_PRECONDITION`, ...). */
  readonly code: grpc.status;
  /** Its name, e.g. `"FAILED_PRECONDITION"`. */
  readonly codeName: string;
  /** google.rpc.ErrorInfo reason, e.g. `"INSUFFICIENT_AVAILABILITY"` (undefined without one). */
  readonly reason: string | undefined;
  /** google.rpc.ErrorInfo domain (`"inventory.ledger.v1"` for the ledger's own errors). */
  readonly domain: string | undefined;
  /** google.rpc.ErrorInfo metadata (e.g. `channel`, `shortLines`, `field`). */
  readonly metadata: Readonly<Record<string, string>>;
  readonly errorInfo: ErrorInfo | undefined;
  readonly badRequest: BadRequest | undefined;
  readonly preconditionFailure: PreconditionFailure | undefined;
  readonly resourceInfo: ResourceInfo | undefined;
  readonly retryInfo: RetryInfo | undefined;
  /** Every detail as sent, including types this client does not decode. */
  readonly details: readonly Any[];
  /** The x-correlation-id the call was sent with (quote it to the ledger's operators). */
  readonly correlationId: string;
  /** How many attempts were made. */
  readonly attempts: number;

  constructor(init: {
    code: grpc.status;
    message: string;
    details?: Any[];
    correlationId: string;
    attempts: number;
    cause?: unknown;
  }) {
    const codeName = grpc.status[init.code] ?? `CODE_${init.code}`;
    super(`${codeName}: ${init.message}`, init.cause === undefined ? {} : { cause: init.cause });
    this.name = "LedgerError";
    this.code = init.code;
    this.codeName = codeName;
    this.details = init.details ?? [];
    this.correlationId = init.correlationId;
    this.attempts = init.attempts;
    this.errorInfo = unpack(this.details, "google.rpc.ErrorInfo", ErrorInfo);
    this.badRequest = unpack(this.details, "google.rpc.BadRequest", BadRequest);
    this.preconditionFailure = unpack(
      this.details,
      "google.rpc.PreconditionFailure",
      PreconditionFailure,
    );
    this.resourceInfo = unpack(this.details, "google.rpc.ResourceInfo", ResourceInfo);
    this.retryInfo = unpack(this.details, "google.rpc.RetryInfo", RetryInfo);
    this.reason = this.errorInfo?.reason || undefined;
    this.domain = this.errorInfo?.domain || undefined;
    this.metadata = { ...(this.errorInfo?.metadata ?? {}) };
  }

  /** Whether the client retries this code (UNAVAILABLE, ABORTED). */
  get retryable(): boolean {
    return RETRYABLE_CODES.has(this.code);
  }

  /** The server's suggested back-off (google.rpc.RetryInfo), in ms. */
  get retryDelayMs(): number | undefined {
    const delay = this.retryInfo?.retryDelay;
    return delay === undefined ? undefined : delay.seconds * 1000 + delay.nanos / 1e6;
  }

  /** A LedgerError from a @grpc/grpc-js error, with `grpc-status-details-bin` decoded. */
  static fromServiceError(
    error: grpc.ServiceError,
    correlationId: string,
    attempts = 1,
  ): LedgerError {
    let message = error.details || error.message;
    let details: Any[] = [];
    const encoded = error.metadata?.get(STATUS_DETAILS_HEADER)[0];
    if (encoded instanceof Uint8Array) {
      try {
        const status = Status.decode(encoded);
        message = status.message || message;
        details = status.details;
      } catch {
        // Undecodable details: keep the code and message, like a call without details.
      }
    }
    return new LedgerError({
      code: error.code ?? grpc.status.UNKNOWN,
      message,
      details,
      correlationId,
      attempts,
      cause: error,
    });
  }
}

interface MessageType<T> {
  decode(input: Uint8Array): T;
}

function unpack<T>(details: readonly Any[], typeName: string, type: MessageType<T>): T | undefined {
  const packed = details.find((any) => any.typeUrl.split("/").pop() === typeName);
  if (packed === undefined) {
    return undefined;
  }
  try {
    return type.decode(packed.value);
  } catch {
    return undefined;
  }
}

function isServiceError(error: unknown): error is grpc.ServiceError {
  return (
    error instanceof Error &&
    typeof (error as Partial<grpc.ServiceError>).code === "number" &&
    (error as Partial<grpc.ServiceError>).metadata instanceof grpc.Metadata
  );
}

type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: grpc.Metadata,
  options: Partial<grpc.CallOptions>,
  callback: (error: grpc.ServiceError | null, response: Res) => void,
) => grpc.ClientUnaryCall;

/** The generated stubs, sharing one channel. */
export interface LedgerStubs {
  reservations: ReservationServiceClient;
  queries: InventoryQueryServiceClient;
  movements: MovementServiceClient;
  policies: PolicyServiceClient;
  audits: AuditServiceClient;
}

export class LedgerClient {
  /** The generated @grpc/grpc-js clients, on this client's channel (for the other RPCs). */
  readonly stubs: LedgerStubs;
  private readonly channel: grpc.Channel;
  private readonly token: string | undefined;
  private readonly deadlineMs: number;
  private readonly maxAttempts: number;
  private readonly initialBackoffMs: number;
  private readonly maxBackoffMs: number;

  constructor(options: LedgerClientOptions) {
    const channelOptions: grpc.ChannelOptions = { ...(options.channelOptions ?? {}) };
    const tls = options.tls === true ? {} : options.tls || undefined;
    if (tls?.serverName) {
      channelOptions["grpc.ssl_target_name_override"] = tls.serverName;
      channelOptions["grpc.default_authority"] = tls.serverName;
    }
    const credentials =
      options.credentials ??
      (tls === undefined
        ? grpc.credentials.createInsecure()
        : grpc.credentials.createSsl(
            tls.rootCerts ?? null,
            tls.privateKey ?? null,
            tls.certChain ?? null,
          ));
    this.channel = new grpc.Channel(options.address, credentials, channelOptions);
    const shared = { channelOverride: this.channel };
    this.stubs = {
      reservations: new ReservationServiceClient(options.address, credentials, shared),
      queries: new InventoryQueryServiceClient(options.address, credentials, shared),
      movements: new MovementServiceClient(options.address, credentials, shared),
      policies: new PolicyServiceClient(options.address, credentials, shared),
      audits: new AuditServiceClient(options.address, credentials, shared),
    };
    this.token = options.token;
    this.deadlineMs = options.deadlineMs ?? DEFAULT_DEADLINE_MS;
    this.maxAttempts = Math.max(1, options.retry?.maxAttempts ?? 4);
    this.initialBackoffMs = options.retry?.initialBackoffMs ?? 100;
    this.maxBackoffMs = options.retry?.maxBackoffMs ?? 2000;
  }

  /** Reserve every line or none (FAILED_PRECONDITION, reason INSUFFICIENT_AVAILABILITY). */
  reserve(input: ReserveInput, options: WriteOptions = {}): Promise<Reservation> {
    const request = ReserveRequest.fromPartial({
      requestId: options.requestId ?? randomUUID(),
      channel: input.channel,
      orderRef: input.orderRef ?? "",
      lines: input.lines.map((line) => ({
        sku: line.sku,
        qty: line.qty,
        locationId: line.locationId ?? "",
        lotId: line.lotId ?? "",
        minExpiresAt: line.minExpiresAt,
      })),
      ttl: input.ttlSeconds === undefined ? undefined : durationOf(input.ttlSeconds),
      allowSplit: input.allowSplit ?? false,
    });
    return this.call(this.stubs.reservations, this.stubs.reservations.reserve, request, options);
  }

  /** Commit an active reservation (the stock stays held until shipped). */
  commit(reservationId: string, options: ReservationActionOptions = {}): Promise<Reservation> {
    const request = CommitRequest.fromPartial({
      requestId: options.requestId ?? randomUUID(),
      reservationId,
      channel: options.channel ?? "",
    });
    return this.call(this.stubs.reservations, this.stubs.reservations.commit, request, options);
  }

  /** Release a reservation: its stock is available again. */
  release(reservationId: string, options: ReservationActionOptions = {}): Promise<Reservation> {
    const request = ReleaseRequest.fromPartial({
      requestId: options.requestId ?? randomUUID(),
      reservationId,
      channel: options.channel ?? "",
    });
    return this.call(this.stubs.reservations, this.stubs.reservations.release, request, options);
  }

  /** One reservation (NOT_FOUND for another channel's, when `channel` is given). */
  getReservation(
    reservationId: string,
    options: CallOptions & { channel?: string } = {},
  ): Promise<Reservation> {
    const request = GetReservationRequest.fromPartial({
      reservationId,
      channel: options.channel ?? "",
    });
    return this.call(
      this.stubs.reservations,
      this.stubs.reservations.getReservation,
      request,
      options,
    );
  }

  /** Channel availability of a SKU. */
  getAvailability(input: AvailabilityInput, options: CallOptions = {}): Promise<Availability> {
    const request = GetAvailabilityRequest.fromPartial({
      sku: input.sku,
      channel: input.channel,
      consistency: input.consistency ?? Consistency.CONSISTENCY_UNSPECIFIED,
      minPosition: input.minPosition ?? 0,
      horizon: input.horizon,
    });
    return this.call(this.stubs.queries, this.stubs.queries.getAvailability, request, options);
  }

  /** The position (buckets, reserved, available) of a SKU at a location, read from the ledger. */
  getPosition(input: PositionInput, options: CallOptions = {}): Promise<Position> {
    const request = GetPositionRequest.fromPartial({
      sku: input.sku,
      locationId: input.locationId,
      includeHolds: input.includeHolds ?? false,
    });
    return this.call(this.stubs.queries, this.stubs.queries.getPosition, request, options);
  }

  /** Where one unit of a SERIAL SKU is, and its history; strongly consistent. A serial
   * never seen rejects with a LedgerError NOT_FOUND, reason SERIAL_NOT_FOUND. Scope `query`. */
  getSerial(sku: string, serialNumber: string, options: CallOptions = {}): Promise<SerialUnit> {
    const request = GetSerialRequest.fromPartial({ sku, serialNumber });
    return this.call(this.stubs.queries, this.stubs.queries.getSerial, request, options);
  }

  /** Record movements; each is idempotent on (source, messageId), so retries are safe. */
  recordMovements(
    movements: MovementInput[],
    options: CallOptions = {},
  ): Promise<RecordMovementsResponse> {
    const request = RecordMovementsRequest.fromPartial({ movements });
    return this.call(this.stubs.movements, this.stubs.movements.recordMovements, request, options);
  }

  /** Set a position's safety stock; the answer is the position afterwards, and its
   * `ledgerPosition` is what `getAvailability` takes as `minPosition`. */
  setSafetyStock(input: SafetyStockInput, options: WriteOptions = {}): Promise<Position> {
    const request = SetSafetyStockRequest.fromPartial({
      requestId: options.requestId ?? randomUUID(),
      ...input,
    });
    return this.call(this.stubs.policies, this.stubs.policies.setSafetyStock, request, options);
  }

  /** Set a channel's fence at a position (FAILED_PRECONDITION when a raise does not fit);
   * the answer is the position afterwards, with `ledgerPosition`. */
  setChannelFence(input: ChannelFenceInput, options: WriteOptions = {}): Promise<Position> {
    const request = SetChannelFenceRequest.fromPartial({
      requestId: options.requestId ?? randomUUID(),
      ...input,
    });
    return this.call(this.stubs.policies, this.stubs.policies.setChannelFence, request, options);
  }

  /** Replace a channel's availability policy; the answer carries `ledgerPosition`. */
  setChannelPolicy(input: ChannelPolicyInput, options: WriteOptions = {}): Promise<ChannelPolicy> {
    const request = SetChannelPolicyRequest.fromPartial({
      requestId: options.requestId ?? randomUUID(),
      ...input,
    });
    return this.call(this.stubs.policies, this.stubs.policies.setChannelPolicy, request, options);
  }

  /** Set how a SKU is tracked (FAILED_PRECONDITION, reason ITEM_TRACKING_LOCKED, when it
   * leaves NONE while the SKU holds stock, or leaves LOT/SERIAL); carries `ledgerPosition`. */
  setItemPolicy(input: ItemPolicyInput, options: WriteOptions = {}): Promise<ItemPolicy> {
    const request = SetItemPolicyRequest.fromPartial({
      requestId: options.requestId ?? randomUUID(),
      ...input,
    });
    return this.call(this.stubs.policies, this.stubs.policies.setItemPolicy, request, options);
  }

  /** A SKU's item policy, read from the ledger; an unknown SKU is NONE, version 0. */
  getItemPolicy(sku: string, options: CallOptions = {}): Promise<ItemPolicy> {
    const request = GetItemPolicyRequest.fromPartial({ sku });
    return this.call(this.stubs.policies, this.stubs.policies.getItemPolicy, request, options);
  }

  /** One page of a lot's recall trace (contract §2): the ledger entries naming the lot in
   * ledger order, and the lot's buckets per location on every page; `asOf` answers as the
   * ledger knew it then. Follow `nextPageToken` for the rest. Scope `audit`. */
  traceLot(input: TraceLotInput, options: CallOptions = {}): Promise<TraceLotResponse> {
    const request = TraceLotRequest.fromPartial(input);
    return this.call(this.stubs.audits, this.stubs.audits.traceLot, request, options);
  }

  /** Close the channel; calls in flight fail with CANCELLED or UNAVAILABLE. */
  close(): void {
    this.stubs.reservations.close();
    this.stubs.queries.close();
    this.stubs.movements.close();
    this.stubs.policies.close();
    this.stubs.audits.close();
    this.channel.close();
  }

  /** The metadata of one call: bearer token and correlation id. */
  private metadata(correlationId: string): grpc.Metadata {
    const metadata = new grpc.Metadata();
    metadata.set(CORRELATION_HEADER, correlationId);
    if (this.token !== undefined) {
      metadata.set("authorization", `Bearer ${this.token}`);
    }
    return metadata;
  }

  /** Run one unary call with deadline, metadata and retries; failures become LedgerError. */
  private async call<Req, Res>(
    stub: grpc.Client,
    method: UnaryMethod<Req, Res>,
    request: Req,
    options: CallOptions,
  ): Promise<Res> {
    const correlationId = options.correlationId ?? randomUUID();
    const deadline = Date.now() + (options.deadlineMs ?? this.deadlineMs);
    for (let attempt = 1; ; attempt++) {
      try {
        return await new Promise<Res>((resolve, reject) => {
          method.call(
            stub,
            request,
            this.metadata(correlationId),
            { deadline: new Date(deadline) },
            (error, response) => (error ? reject(error) : resolve(response)),
          );
        });
      } catch (caught) {
        if (!isServiceError(caught)) {
          throw caught;
        }
        const error = LedgerError.fromServiceError(caught, correlationId, attempt);
        if (!error.retryable || attempt >= this.maxAttempts) {
          throw error;
        }
        const ceiling = Math.min(this.maxBackoffMs, this.initialBackoffMs * 2 ** (attempt - 1));
        const backoff = Math.max(Math.random() * ceiling, error.retryDelayMs ?? 0);
        if (Date.now() + backoff >= deadline) {
          throw error;
        }
        await new Promise((resolve) => setTimeout(resolve, backoff));
      }
    }
  }
}

function durationOf(seconds: number): { seconds: number; nanos: number } {
  const whole = Math.floor(seconds);
  return { seconds: whole, nanos: Math.round((seconds - whole) * 1e9) };
}
