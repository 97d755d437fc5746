"""Encrypted strings in CDB (``tailf:aes-256-cfb-128-encrypted-string``), with the keys of
``/etc/ncs/ncs.crypto_keys``.

A value committed in clear text is stored encrypted (``$9$`` + base64 of a random IV and the
AES-256-CFB128 ciphertext; ``$8$`` and AES-128 with ``AESCFB128_KEY`` on releases without the
256-bit key). The cipher and the key are NSO's; the layout after the prefix is the
simulator's own. Decrypting with other keys yields other bytes, which is how the HA token
tells nodes with different keys apart.
"""

from __future__ import annotations

import base64
import os
from typing import Optional

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:  # cryptography >= 47 keeps CFB with the old ciphers; the old place warns, then goes
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB

_KEY_NAMES = {"$9$": "AES256CFB128_KEY", "$8$": "AESCFB128_KEY"}


def _key(keys: dict[str, str], prefix: str) -> Optional[bytes]:
    try:
        return bytes.fromhex(keys[_KEY_NAMES[prefix]])
    except (KeyError, ValueError):
        return None


def is_encrypted(value: str) -> bool:
    return value.startswith(("$8$", "$9$"))


def encrypt(keys: dict[str, str], clear: str) -> str:
    prefix = "$9$" if "AES256CFB128_KEY" in keys else "$8$"
    key = _key(keys, prefix)
    if key is None:
        raise ValueError(f"ncs.crypto_keys holds no usable {_KEY_NAMES[prefix]}")
    iv = os.urandom(16)
    enc = Cipher(algorithms.AES(key), CFB(iv)).encryptor()
    body = enc.update(clear.encode()) + enc.finalize()
    return prefix + base64.b64encode(iv + body).decode()


def decrypt(keys: dict[str, str], stored: str) -> Optional[bytes]:
    """The clear bytes (garbage with other keys), or None if ``stored`` is not encrypted."""
    if not is_encrypted(stored):
        return None
    key = _key(keys, stored[:3])
    if key is None:
        return None
    try:
        raw = base64.b64decode(stored[3:], validate=True)
    except ValueError:
        return None
    if len(raw) < 16:
        return None
    dec = Cipher(algorithms.AES(key), CFB(raw[:16])).decryptor()
    return dec.update(raw[16:]) + dec.finalize()
