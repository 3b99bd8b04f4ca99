"""Board profiles: every shipped profile loads; malformed profiles are refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeseal.hardware.errors import HardwareError
from edgeseal.hardware.profiles import (
    BOOT_COMPONENTS,
    BoardProfile,
    ProfileError,
    list_profiles,
    load_profile,
    parse_profile,
)

SHIPPED = ["emulated", "jetson-agx-orin", "jetson-orin-nano", "rpi4-tpm", "rpi5-tpm", "x86-dtpm"]

GOOD = """\
version = 1
id = "test-board"
description = "a board for tests"
hardware_class = "rpi4"
tpm = "discrete"
tcti = "device:/dev/tpmrm0"
aead = "chacha20-poly1305"
serial_console = "/dev/serial0"

[pcr]
bank = "sha256"
policy = [9, 0, 4]

[measured_boot]
firmware = 0
bootloader = 4
kernel = 9
rootfs = 9
"""


def test_list_profiles_names_every_shipped_board() -> None:
    assert list_profiles() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads(name: str) -> None:
    profile = load_profile(name)
    assert isinstance(profile, BoardProfile)
    assert profile.id == name
    assert profile.pcr_bank == "sha256"
    assert [c for c, _ in profile.measured_boot] == list(BOOT_COMPONENTS)
    # The key policy binds every PCR that measured boot writes: otherwise a
    # changed component would not lock the key.
    assert set(profile.measured_pcrs) <= set(profile.policy_pcrs)
    assert profile.description


def test_board_facts() -> None:
    assert load_profile("rpi4-tpm").aead == "chacha20-poly1305"
    for name in ("emulated", "jetson-orin-nano", "jetson-agx-orin", "rpi5-tpm", "x86-dtpm"):
        assert load_profile(name).aead == "aes-256-gcm"
    assert load_profile("jetson-orin-nano").hardware_class == "jetson-orin"
    assert load_profile("jetson-agx-orin").hardware_class == "jetson-orin"
    assert load_profile("jetson-orin-nano").tpm == "ftpm"
    assert load_profile("jetson-orin-nano").serial_console == "/dev/ttyTHS0"
    assert load_profile("rpi5-tpm").tcti == "device:/dev/tpmrm0"
    assert load_profile("x86-dtpm").serial_console == "/dev/ttyS0"
    emulated = load_profile("emulated")
    assert emulated.emulated and emulated.tcti == "swtpm"
    assert emulated.pcr_for("kernel") == 9


def test_parse_good_profile_normalises() -> None:
    profile = parse_profile(GOOD.encode())
    assert profile.policy_pcrs == (0, 4, 9)
    assert profile.measured_pcrs == (0, 4, 9)
    assert profile.pcr_for("rootfs") == 9


def test_load_by_path(tmp_path: Path) -> None:
    path = tmp_path / "board.toml"
    path.write_text(GOOD)
    assert load_profile(path).id == "test-board"
    assert load_profile(str(path)).source == str(path)


def _mutate(old: str, new: str) -> bytes:
    assert old in GOOD
    return GOOD.replace(old, new).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            _mutate('aead = "chacha20-poly1305"', 'aead = "aes-128-cbc"'),
            "unknown aead 'aes-128-cbc'",
        ),
        (_mutate("policy = [9, 0, 4]", "policy = [9, 0, 24]"), "bad PCR index 24"),
        (_mutate("kernel = 9", "kernel = -1"), "measured_boot.kernel: bad PCR index -1"),
        (_mutate("kernel = 9", "kernel = true"), "bad PCR index True"),
        (_mutate("policy = [9, 0, 4]", "policy = []"), "non-empty list"),
        (_mutate("policy = [9, 0, 4]", "policy = [9, 9]"), "lists a PCR twice"),
        (_mutate('serial_console = "/dev/serial0"\n', ""), "missing key(s) serial_console"),
        (_mutate("version = 1", "version = 1\ncolour = 'red'"), "unknown key(s) colour"),
        (_mutate('bank = "sha256"', 'bank = "sha256"\nextra = 1'), "unknown key(s) pcr.extra"),
        (_mutate("rootfs = 9", "rootfs = 9\ninitrd = 9"), "measured_boot.initrd"),
        (_mutate("rootfs = 9\n", ""), "missing key(s) measured_boot.rootfs"),
        (_mutate("version = 1", "version = 2"), "unsupported profile format version 2"),
        (_mutate('bank = "sha256"', 'bank = "sha1"'), "unknown pcr.bank 'sha1'"),
        (_mutate('tcti = "device:/dev/tpmrm0"', 'tcti = "serial:/dev/x"'), "unknown TCTI"),
        (_mutate('tcti = "device:/dev/tpmrm0"', 'tcti = "swtpm"'), "goes with tpm"),
        (_mutate('id = "test-board"', 'id = "Test Board"'), "lower-case"),
        (_mutate('hardware_class = "rpi4"', "hardware_class = 4"), "non-empty string"),
        (b"version = ", "not valid TOML"),
        (b"\xff\xfe", "not UTF-8"),
        (b"#" * 70_000, "larger than"),
    ],
)
def test_bad_profile_refused_with_clear_message(data: bytes, message: str) -> None:
    with pytest.raises(ProfileError) as info:
        parse_profile(data, source="board.toml")
    assert message in info.value.diagnostics()
    assert "board.toml" in info.value.diagnostics()
    assert isinstance(info.value, HardwareError)


def test_unknown_profile_name_lists_the_shipped_ones() -> None:
    with pytest.raises(ProfileError, match=r"unknown board profile 'rpi3'.*rpi4-tpm"):
        load_profile("rpi3")


def test_missing_profile_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read board profile"):
        load_profile(tmp_path / "absent.toml")


def test_profile_is_frozen() -> None:
    profile = load_profile("emulated")
    with pytest.raises(AttributeError):
        profile.aead = "chacha20-poly1305"  # type: ignore[misc]
