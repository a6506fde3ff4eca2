"""The dashboard's users and API tokens, as the historian keeps them: names, roles and hashes only.

Hashing is fleet/web/credentials.py's; nothing here ever sees a password or a token in the clear, and nothing
that leaves this module carries a hash except `password_hash`, which only the login check reads.
"""
from __future__ import annotations

from dataclasses import dataclass

from fleet.historian.store import Historian, now_us

ROLES = ("viewer", "operator", "admin")  # each may do what the ones before it may


def role_rank(role: str) -> int:
    return ROLES.index(role)


@dataclass(frozen=True)
class User:
    name: str
    role: str
    created_us: int

    def may(self, role: str) -> bool:
        """Whether this user has `role` or a higher one."""
        return role_rank(self.role) >= role_rank(role)


class Accounts:
    def __init__(self, historian: Historian) -> None:
        self.historian = historian

    def add(self, name: str, role: str, password_hash: str) -> None:
        """A new user, or a new role and password for an existing one (whose logins then end)."""
        if role not in ROLES:
            raise ValueError(f"role: expected one of {', '.join(ROLES)}, got {role!r}")
        self.historian.write([
            ("INSERT INTO users (name, role, password_hash, created_us) VALUES (?, ?, ?, ?) ON CONFLICT (name) "
             "DO UPDATE SET role = excluded.role, password_hash = excluded.password_hash", (name, role, password_hash, now_us())),
            ("DELETE FROM web_sessions WHERE user_name = ?", (name,))])

    def remove(self, name: str) -> bool:
        # SQLite does not enforce the foreign keys unless told to: the user's tokens and sessions go explicitly.
        *_, removed = self.historian.write([("DELETE FROM api_tokens WHERE user_name = ?", (name,)),
                                            ("DELETE FROM web_sessions WHERE user_name = ?", (name,)),
                                            ("DELETE FROM users WHERE name = ?", (name,))])
        return removed > 0

    def users(self) -> list[User]:
        return [User(n, r, int(c)) for n, r, c in self.historian.read("SELECT name, role, created_us FROM users ORDER BY name")]

    def user(self, name: str) -> User | None:
        rows = self.historian.read("SELECT name, role, created_us FROM users WHERE name = ?", (name,))
        return User(rows[0][0], rows[0][1], int(rows[0][2])) if rows else None

    def password_hash(self, name: str) -> str | None:
        rows = self.historian.read("SELECT password_hash FROM users WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    def add_token(self, name: str, token_hash: str) -> None:
        if self.user(name) is None:
            raise ValueError(f"user {name!r}: no such user (cm-fleet user add {name} --role ... first)")
        self.historian.write([("INSERT INTO api_tokens (token_hash, user_name, created_us) VALUES (?, ?, ?)",
                               (token_hash, name, now_us()))])

    def token_user(self, token_hash: str) -> User | None:
        rows = self.historian.read("SELECT u.name, u.role, u.created_us FROM api_tokens t JOIN users u ON u.name = t.user_name "
                                   "WHERE t.token_hash = ?", (token_hash,))
        return User(rows[0][0], rows[0][1], int(rows[0][2])) if rows else None

    def open_session(self, name: str, session_hash: str, lifetime_us: int) -> None:
        """A login: the session's id is in the signed cookie, its hash here; expired ones are swept at the same time."""
        now = now_us()
        self.historian.write([("DELETE FROM web_sessions WHERE expires_us <= ?", (now,)),
                              ("INSERT INTO web_sessions (session_hash, user_name, created_us, expires_us) VALUES (?, ?, ?, ?)",
                               (session_hash, name, now, now + lifetime_us))])

    def session_user(self, session_hash: str) -> User | None:
        rows = self.historian.read("SELECT u.name, u.role, u.created_us FROM web_sessions s JOIN users u ON u.name = s.user_name "
                                   "WHERE s.session_hash = ? AND s.expires_us > ?", (session_hash, now_us()))
        return User(rows[0][0], rows[0][1], int(rows[0][2])) if rows else None

    def close_session(self, session_hash: str) -> None:
        self.historian.write([("DELETE FROM web_sessions WHERE session_hash = ?", (session_hash,))])
