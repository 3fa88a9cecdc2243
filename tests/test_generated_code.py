"""The committed client stubs match protos/, and they define the API of contract §4.

Method: regenerate with tools/gen_protos.py into a scratch directory and diff it with
clients/python/src; then import every generated module and read the services and field
annotations back from the protobuf descriptor pool.
"""

from __future__ import annotations

import importlib

import pytest
from google.api import field_behavior_pb2
from google.protobuf import descriptor, descriptor_pool

from tools import gen_protos, gen_sync_client

PACKAGE = "inventory.ledger.v1"

EXPECTED_METHODS = {
    "InventoryQueryService": {
        "GetPosition",
        "ListPositions",
        "GetAvailability",
        "WatchAvailability",
        "ListInTransit",
        "ListExceptions",
        "GetProjectionStatus",
        "GetSerial",
    },
    "ReservationService": {
        "Reserve",
        "GetReservation",
        "Commit",
        "Release",
        "ListReservations",
    },
    "MovementService": {"RecordMovements"},
    "PolicyService": {
        "SetSafetyStock",
        "SetChannelFence",
        "SetChannelPolicy",
        "SetItemPolicy",
        "GetItemPolicy",
    },
}


def generated_grpc_modules() -> list[str]:
    """Module names of every committed ``*_pb2_grpc.py``."""
    package_dir = gen_protos.DEFAULT_OUT / PACKAGE.replace(".", "/")
    return [f"{PACKAGE}.{path.stem}" for path in sorted(package_dir.glob("*_pb2_grpc.py"))]


def test_committed_stubs_are_fresh():
    """Regenerating from protos/ reproduces clients/python/src byte for byte."""
    problems = gen_protos.check(gen_protos.DEFAULT_OUT)
    assert problems == [], "stale generated code; run `python -m tools.gen_protos`:\n" + "\n".join(
        problems
    )


def test_every_generated_file_carries_the_header():
    """Each owned file starts with the do-not-edit line, so nobody edits it by hand."""
    for relative in gen_protos.owned_files(gen_protos.DEFAULT_OUT):
        text = (gen_protos.DEFAULT_OUT / relative).read_text(encoding="utf-8")
        assert text.startswith(gen_protos.HEADER), relative


def test_sync_client_is_generated_from_the_async_one():
    """client.py, _audit.py, _calls.py and _stream.py are what tools/gen_sync_client.py makes
    of their asyncio twins, each headed by the do-not-edit line."""
    diff = gen_sync_client.check()
    assert diff == [], "sync client drifted; run `python -m tools.gen_sync_client`:\n" + "".join(
        diff
    )
    for source, target in gen_sync_client.MODULES.items():
        text = (gen_sync_client.OUT_DIR / target).read_text(encoding="utf-8")
        assert text.startswith(gen_sync_client.HEADER.format(source=source)), target


def test_sync_client_check_fails_on_a_hand_edit(tmp_path, monkeypatch, capsys):
    """An edit to a generated module is reported as a diff with exit status 1."""
    for target in gen_sync_client.MODULES.values():
        (tmp_path / target).write_text(
            (gen_sync_client.OUT_DIR / target).read_text(encoding="utf-8"), encoding="utf-8"
        )
    edited = tmp_path / "_calls.py"
    text = edited.read_text(encoding="utf-8")
    assert text.count("time.sleep(delay)") == 1
    edited.write_text(text.replace("time.sleep(delay)", "time.sleep(2 * delay)"), "utf-8")
    monkeypatch.setattr(gen_sync_client, "OUT_DIR", tmp_path)
    assert gen_sync_client.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "--- _calls.py (committed)" in out
    assert "-                    time.sleep(2 * delay)" in out
    assert "+                    time.sleep(delay)" in out


def test_sync_client_generator_refuses_a_stale_rule(tmp_path, monkeypatch, capsys):
    """A text rule that no longer matches the asyncio modules stops generation (status 2)."""
    for source in gen_sync_client.MODULES:
        text = (gen_sync_client.SOURCE_DIR / source).read_text(encoding="utf-8")
        text = text.replace("the consumer's ``async for`` stops", "it stops")
        (tmp_path / source).write_text(text, encoding="utf-8")
    monkeypatch.setattr(gen_sync_client, "SOURCE_DIR", tmp_path)
    assert gen_sync_client.main(["--check"]) == 2
    assert "the consumer's ``async for`` stops" in capsys.readouterr().err


def test_async_only_lines_are_dropped_with_their_block():
    """The ``# async only`` marker removes the line and everything indented under it."""
    source = (
        "try:\n"
        "    pass\n"
        "except KeyError:  # async only\n"
        "    x = 1\n"
        "\n"
        "    y = 2\n"
        "except ValueError:\n"
        "    pass\n"
    )
    assert gen_sync_client.drop_async_only(source) == (
        "try:\n    pass\nexcept ValueError:\n    pass\n"
    )


def test_services_are_registered_with_their_methods():
    """Importing the stubs registers the four services of contract §4.1-4.3 and their methods."""
    modules = generated_grpc_modules()
    assert len(modules) == len(gen_protos.proto_files())
    for name in modules:
        importlib.import_module(name)
    pool = descriptor_pool.Default()
    for service_name, methods in EXPECTED_METHODS.items():
        service = pool.FindServiceByName(f"{PACKAGE}.{service_name}")
        assert {method.name for method in service.methods} == methods, service_name
        grpc_module = importlib.import_module(
            service.file.name.removesuffix(".proto").replace("/", ".") + "_pb2_grpc"
        )
        for attribute in (f"{service_name}Stub", f"{service_name}Servicer"):
            assert hasattr(grpc_module, attribute), attribute
        assert hasattr(grpc_module, f"add_{service_name}Servicer_to_server")


def request_messages() -> list[descriptor.Descriptor]:
    """Every request message of the services, and the messages nested in them."""
    for name in generated_grpc_modules():
        importlib.import_module(name)
    pool = descriptor_pool.Default()
    pending = [
        method.input_type
        for service_name in EXPECTED_METHODS
        for method in pool.FindServiceByName(f"{PACKAGE}.{service_name}").methods
    ]
    seen: dict[str, descriptor.Descriptor] = {}
    while pending:
        message = pending.pop()
        if message.full_name in seen or not message.full_name.startswith(PACKAGE):
            continue
        seen[message.full_name] = message
        pending.extend(field.message_type for field in message.fields if field.message_type)
    return sorted(seen.values(), key=lambda message: message.full_name)


@pytest.mark.parametrize("message", request_messages(), ids=lambda message: message.name)
def test_every_request_field_has_a_field_behavior(message: descriptor.Descriptor):
    """AIP-203: each request field says whether it is REQUIRED or OPTIONAL."""
    for field in message.fields:
        behaviors = field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
        assert behaviors, f"{message.full_name}.{field.name} has no google.api.field_behavior"


def test_movement_quantities_have_explicit_presence():
    """``qty``, ``delta`` and ``counted`` distinguish 0 from absent; other scalars do not."""
    movement_pb2 = importlib.import_module(f"{PACKAGE}.movement_pb2")
    movement = movement_pb2.Movement()
    for name in ("qty", "delta", "counted"):
        assert not movement.HasField(name)
        setattr(movement, name, 0)
        assert movement.HasField(name)
    assert not movement_pb2.Movement.DESCRIPTOR.fields_by_name["uom"].has_presence
