"""Per-device envelopes under the online ``envelopes`` role, in hashed bins.

``envelopes`` (delegated by top-level targets for ``envelopes/*/*``) delegates
in turn to 2**B bins with ``SuccinctRoles`` (TAP 15): the bin of a target is
the first B bits of the SHA-256 of its path. A device's refresh then fetches
one small bin instead of every envelope of the fleet, and publishing a release
for N devices re-signs at most min(N, 2**B) bins, all with the online key.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime

from securesystemslib.signer import Key
from tuf.api.metadata import Delegations, Metadata, SuccinctRoles, TargetFile, Targets

from edgeseal.ota_server.errors import InvalidNameError, ProposalError, UnknownTargetError
from edgeseal.ota_server.repository.layout import ENVELOPES, parse_envelope_path

logger = logging.getLogger(__name__)

MAX_ENVELOPE = 64 * 1024
MIN_BIN_BITS = 1
MAX_BIN_BITS = 14


def new_envelopes_role(key: Key, bin_bits: int, expires: datetime) -> Targets:
    """The ``envelopes`` role: no targets of its own, 2**bin_bits succinct bins."""
    if not MIN_BIN_BITS <= bin_bits <= MAX_BIN_BITS:
        raise ProposalError(
            f"bin_bits {bin_bits} must be between {MIN_BIN_BITS} and {MAX_BIN_BITS}",
            field="bin_bits",
        )
    succinct = SuccinctRoles(
        keyids=[key.keyid], threshold=1, bit_length=bin_bits, name_prefix=ENVELOPES
    )
    delegations = Delegations(keys={key.keyid: key}, succinct_roles=succinct)
    return Targets(version=1, expires=expires, delegations=delegations)


def succinct_of(envelopes: Targets) -> SuccinctRoles:
    if envelopes.delegations is None or envelopes.delegations.succinct_roles is None:
        raise ProposalError("the envelopes role has no hashed-bin delegation")
    return envelopes.delegations.succinct_roles


def envelope_target(path: str, data: bytes) -> TargetFile:
    """The TUF target of one envelope, with the contract's custom metadata."""
    parsed = parse_envelope_path(path)
    if not data or len(data) > MAX_ENVELOPE:
        raise InvalidNameError(
            f"envelope {path!r} is {len(data)} bytes; expected 1..{MAX_ENVELOPE}",
            field="target_path",
        )
    target = TargetFile.from_data(path, data, ["sha256"])
    target.unrecognized_fields["custom"] = parsed.custom()
    return target


def plan(
    succinct: SuccinctRoles, add: Mapping[str, TargetFile], remove: Sequence[str]
) -> dict[str, tuple[dict[str, TargetFile], list[str]]]:
    """Group additions and removals by the bin that holds them."""
    overlap = set(add) & set(remove)
    if overlap:
        raise ProposalError(f"envelope {sorted(overlap)[0]!r} is both added and removed")
    by_bin: dict[str, tuple[dict[str, TargetFile], list[str]]] = {}
    for path, target in add.items():
        by_bin.setdefault(succinct.get_role_for_target(path), ({}, []))[0][path] = target
    for path in remove:
        parse_envelope_path(path)
        by_bin.setdefault(succinct.get_role_for_target(path), ({}, []))[1].append(path)
    return by_bin


def next_bin(
    name: str,
    current: Targets,
    add: Mapping[str, TargetFile],
    remove: Sequence[str],
    expires: datetime,
) -> Metadata[Targets]:
    """The next version of one bin, unsigned."""
    targets = dict(current.targets)
    for path in remove:
        if path not in targets:
            raise UnknownTargetError(
                f"cannot remove envelope {path!r}: it is not published", field="target_path"
            )
        del targets[path]
    targets.update(add)
    logger.debug("bin %s: +%d -%d targets", name, len(add), len(remove))
    return Metadata(Targets(version=current.version + 1, expires=expires, targets=targets))
