"""CurveZMQ key files for the rig (server) and the controller (client).

`generate_keys(DIR)` writes, with pyzmq's own certificate format:

    DIR/server.key  DIR/server.key_secret      the rig's pair
    DIR/client.key  DIR/client.key_secret      the controller's pair
    DIR/authorized_clients/client.key          public keys the rig accepts

The rig needs `server.key_secret` and `authorized_clients/`; the controller needs
`client.key_secret` and `server.key`. Copy only those to each machine. A controller whose public
key is not in `authorized_clients/` is refused during the handshake.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import zmq.auth

from stimuli.errors import InputError

AUTHORIZED_DIR = "authorized_clients"


@dataclass(frozen=True)
class ServerKeys:
    public: bytes
    secret: bytes
    authorized_dir: Path


@dataclass(frozen=True)
class ClientKeys:
    public: bytes
    secret: bytes
    server_public: bytes


def generate_keys(out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Create a server and a client key pair in `out_dir`; refuse to overwrite existing keys."""
    out = Path(out_dir)
    if not overwrite and any((out / f).exists() for f in ("server.key_secret", "client.key_secret")):
        raise FileExistsError(f"{out} already holds keys; pass overwrite=True to replace them")
    out.mkdir(parents=True, exist_ok=True)
    zmq.auth.create_certificates(str(out), "server")
    zmq.auth.create_certificates(str(out), "client")
    for name in ("server.key_secret", "client.key_secret"):
        os.chmod(out / name, 0o600)
    auth = out / AUTHORIZED_DIR
    auth.mkdir(exist_ok=True)
    shutil.copyfile(out / "client.key", auth / "client.key")
    return out


def load_server_keys(keys_dir: str | os.PathLike[str]) -> ServerKeys:
    d = Path(keys_dir)
    public, secret = _load(d / "server.key_secret", "the rig's secret key")
    auth = d / AUTHORIZED_DIR
    if not auth.is_dir() or not any(auth.glob("*.key")):
        raise FileNotFoundError(f"{auth}: no authorized controller keys (run `insilico rig keys --out {d}`)")
    return ServerKeys(public=public, secret=secret, authorized_dir=auth)


def load_client_keys(keys_dir: str | os.PathLike[str]) -> ClientKeys:
    d = Path(keys_dir)
    public, secret = _load(d / "client.key_secret", "the controller's secret key")
    server_public, _ = _load(d / "server.key", "the rig's public key", need_secret=False)
    return ClientKeys(public=public, secret=secret, server_public=server_public)


def _load(path: Path, what: str, *, need_secret: bool = True) -> tuple[bytes, bytes]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing {what} (run `insilico rig keys --out {path.parent}`)")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as err:
        raise InputError(f"{path}: not a CurveZMQ key file ({err})") from None
    if need_secret and not secret:
        raise InputError(f"{path}: holds no secret key")
    return public, secret or b""
