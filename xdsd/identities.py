"""Issuing identities to connected proxies: the ``IdentityProvider`` the gRPC streams are
given when ``[mesh.ca]`` is on (``xdsd.transports.identity``), joining the CA
(``xdsd.ca``) to the streams (``xdsd.transports``) as ``xdsd.access`` joins node
authorization to them; the daemon wires it (``xdsd.app``).

How this works: ``Identities.admit`` judges a stream's credential against what its node
claims — an xdsd token must verify (``verify``: malformed, forged, expired or revoked
tokens are UNAUTHENTICATED) and name the node's service and namespace (else
PERMISSION_DENIED); a client certificate has already been judged by the node authorizer
— and issues the proxy a fresh key pair and certificate (``issue``), held as a
``Lease``: the ``default`` secret of that client only (``workload_secret``), never
shared with another client, never written anywhere. Each lease is due for renewal at
``renew_fraction`` of its certificate's life; ``run`` (a task of the daemon) renews the
due ones — a new key and certificate, the stream woken with its new view — unless the
lease's token no longer holds — ``verify`` is run on it again: expired, revoked, or not
signed by today's token key — which ends the stream with UNAUTHENTICATED instead.
``update`` (SIGHUP) takes new settings: revoked token ids end their streams at once; a
new token key has every lease's token verified again at once, ending the streams whose
token it does not verify (``token_forged``: replacing a leaked key cuts off what was
forged with it); a new signing authority (another signing certificate, whatever its
name) makes every lease due again, spread over ``REISSUE_SPREAD`` seconds so that the
re-issue does not stall the event loop.

A REST poller has no stream to push to or end: its lease is ``polled``
(``xdsd.transports.rest_identity`` holds it per poller, from a client certificate only,
since a poll carries no metadata); ``run`` leaves it alone and ``Lease.refresh``, called
on each of its polls, renews it once due, so the poll after the renewal time gets the new
secret. A new signing authority makes it due like every lease.

Proxyless gRPC clients (role ``proxyless``) get no key over xDS: they read certificates
from files (``xdsd certificate``), so no lease; they need no credential either (what
they are sent holds no secret), but one they present must still verify and match.
Gateways are admitted by a client certificate only (an ``authorized_nodes`` grant, as
the node authorizer decides today): a token binds a service and namespace, not the
labels that choose which Gateways' server keys a gateway receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

from xdsd.ca.authority import CertificateAuthority, IssuedCertificate, IssueRefused
from xdsd.ca.files import CAError
from xdsd.ca.sds import workload_secret
from xdsd.ca.tokens import (
    InvalidToken,
    TokenAuthority,
    TokenClaims,
    token_expired,
    token_id_of,
)
from xdsd.cache.cache import ClientIdentity, CredentialKind
from xdsd.model.mesh_config import WORKLOAD_SECRET, MeshConfig
from xdsd.resources import Resource
from xdsd.transports.identity import (
    Credential,
    LeaseListener,
    permission_denied,
    unauthenticated,
)
from xdsd.transports.limits import NodeIdentity, Refused

log = logging.getLogger(__name__)

#: Seconds over which a new signing authority's re-issue of every lease is spread.
REISSUE_SPREAD = 10.0
#: Seconds before a failed issuance is tried again.
RETRY_AFTER = 5.0
#: How many leases ``run`` renews before letting other tasks run.
RENEWALS_PER_TURN = 8

#: Issues a key pair and certificate for (namespace, service); raises on failure.
Issue = Callable[[str, str], IssuedCertificate]
#: Verifies a token (claims) or raises InvalidToken.
Verify = Callable[[str], TokenClaims]

_TOKEN_REFUSALS = {
    "malformed": "the token is malformed",
    "forged": "the token's signature does not verify (signed by another key?)",
    "expired": "the token has expired",
    "revoked": "the token has been revoked ([mesh.ca] revoked_tokens)",
}


def token_refusal(error: InvalidToken, token_id: str = "") -> Refused:
    """The UNAUTHENTICATED refusal of a token ``verify`` refused (counted as
    ``token_REASON``). Its message never holds the token, only its id when known."""
    reason = error.reason if error.reason in _TOKEN_REFUSALS else "malformed"
    what = _TOKEN_REFUSALS[reason]
    if token_id:
        what += f" (token id {token_id})"
    return unauthenticated(f"token_{reason}", what)


class Lease:
    """One connected proxy's issued identity (an ``IdentityLease``): its node, how it
    proved itself (and the token, when a token, to verify it again), its current
    certificate and ``default`` secret, and when it is due for renewal. Made by
    ``Identities.admit``."""

    def __repr__(self) -> str:
        return f"<Lease {self.node.node_id} {self.kind} serial {self.certificate.serial}>"

    def __init__(
        self,
        owner: Identities,
        node: NodeIdentity,
        kind: CredentialKind,
        claims: TokenClaims | None,
        certificate: IssuedCertificate,
        *,
        token: str = "",
        polled: bool = False,
    ) -> None:
        self._owner = owner
        self.node = node
        self.kind: CredentialKind = kind
        self.claims = claims
        #: The token the stream presented ("" for a certificate credential), kept so that
        #: it is verified again at each renewal and when the token key is replaced. It
        #: never appears in ``repr``, logs or views (only ``claims.token_id`` does).
        self.token = token
        #: Held by a REST poller: renewed by ``refresh`` when it polls, not by ``run``.
        self.polled = polled
        #: Why the lease ended (revocation, a token expired at renewal), once it has.
        self.ending: Refused | None = None
        self.issued = 0
        self.certificate = certificate
        self._resource = workload_secret(certificate)
        self.identity = self._identity()
        self.due = owner.due_time(certificate)
        self._listener: LeaseListener | None = None
        self.closed = False

    def _identity(self) -> ClientIdentity:
        self.issued += 1
        c = self.certificate
        return ClientIdentity(
            c.spiffe_id,
            c.serial,
            c.not_before,
            c.not_after,
            self.kind,
            self.claims.token_id if self.claims is not None else "",
            self.issued,
            c.issued_at,
        )

    def resources(self) -> Sequence[Resource]:
        """The client's ``default`` secret now."""
        return (self._resource,)

    def listen(self, listener: LeaseListener) -> None:
        """Call ``listener`` when the secret changes (None) or the stream must end."""
        self._listener = listener

    def close(self) -> None:
        """Stop renewing (the stream ended)."""
        if not self.closed:
            self.closed = True
            self._owner.forget(self)

    def replace(self, certificate: IssuedCertificate) -> None:
        """Hold ``certificate`` from now on and tell the stream."""
        self.certificate = certificate
        self._resource = workload_secret(certificate)
        self.identity = self._identity()
        self.due = self._owner.due_time(certificate)
        if self._listener is not None:
            self._listener(None)

    def refresh(self) -> None:
        """A polled lease's holder polls: renew it now when it is due (the poll then
        gets the new secret). Raises the refusal that ended the lease, if it has ended."""
        if self.ending is None and not self.closed:
            now = self._owner.clock()
            if self.due <= now:
                self._owner.renew(self, now)
        if self.ending is not None:
            raise self.ending

    def end(self, refusal: Refused) -> None:
        """End the stream with ``refusal`` (and stop renewing)."""
        self.ending = refusal
        self.close()
        if self._listener is not None:
            self._listener(refusal)


class Identities:
    """Admits streams and keeps their identities current (see the module docstring).

    ``issue`` makes a certificate for (namespace, service); ``verify`` checks a token;
    ``trust_domain`` names the SPIFFE ids; ``renew_fraction`` of a certificate's life is
    when it is renewed; ``revoked`` are revoked token ids (also refused here, whatever
    ``verify`` does); ``on_refused`` counts refusals found while renewing (listener
    ``grpc``); ``clock`` is the wall clock (seconds since the epoch; injectable for
    tests). Not thread-safe: everything runs on the event loop."""

    enabled = True
    #: The names of the resources a lease holds.
    issued_names = frozenset({WORKLOAD_SECRET})

    def __init__(
        self,
        *,
        issue: Issue,
        verify: Verify,
        trust_domain: str,
        renew_fraction: float = 0.5,
        revoked: frozenset[str] = frozenset(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issue = issue
        self.verify = verify
        self.trust_domain = trust_domain
        self.renew_fraction = renew_fraction
        self.revoked = revoked
        self.clock = clock
        self.leases: set[Lease] = set()
        #: Counts: certificates issued (first issue), renewed (renewals and re-issues).
        self.issued_total = 0
        self.renewed_total = 0
        self._changed = asyncio.Event()

    # -- admission ---------------------------------------------------------------------

    def admit(
        self, node: NodeIdentity, credential: Credential | None, *, polled: bool = False
    ) -> Lease | None:
        """The ``IdentityProvider.admit`` of ``xdsd.transports.identity``; a ``polled``
        lease (a REST poller's) is renewed by its ``refresh``, not by ``run``."""
        claims: TokenClaims | None = None
        if credential is None:
            if node.role == "proxyless":
                return None
            raise unauthenticated(
                "token_absent",
                "no credential: the stream must carry 'authorization: Bearer TOKEN' "
                "metadata (xdsd token; xdsd bootstrap --token-file) or a client certificate",
            )
        if credential.kind == "token":
            claims = self._verified(credential.token)
            if node.role == "gateway":
                raise permission_denied(
                    f"token {claims.token_id} may not speak for gateway {node.node_id!r}: "
                    "a gateway proves itself with a client certificate (authorized_nodes)"
                )
            if (claims.namespace, claims.service) != (node.namespace, node.service):
                raise permission_denied(
                    f"token {claims.token_id} is for service {claims.service!r} in namespace "
                    f"{claims.namespace!r}; node {node.node_id!r} claims service "
                    f"{node.service!r} in namespace {node.namespace!r}"
                )
        if node.role == "proxyless":
            return None  # no key over xDS: proxyless gRPC reads certificate files
        try:
            certificate = self.issue(node.namespace, node.service)
        except IssueRefused as e:
            raise Refused(
                "FAILED_PRECONDITION", 412, "identity_not_issued", f"no identity issued: {e}"
            ) from None
        kind: CredentialKind = "token" if claims is not None else "certificate"
        token = credential.token if claims is not None else ""
        lease = Lease(self, node, kind, claims, certificate, token=token, polled=polled)
        self.leases.add(lease)
        self.issued_total += 1
        self._changed.set()
        log.info(
            "identity issued: %s serial %s until %s (%s%s%s)",
            certificate.spiffe_id,
            certificate.serial,
            certificate.not_after.isoformat(),
            kind,
            f" {claims.token_id}" if claims is not None else "",
            ", REST" if polled else "",
            extra={"node": node.node_id},
        )
        return lease

    def _verified(self, token: str) -> TokenClaims:
        """The claims of ``token``, or Refused (UNAUTHENTICATED)."""
        try:
            claims = self.verify(token)
        except InvalidToken as e:  # the id a token claims, for logs (never the token)
            raise token_refusal(
                e, token_id_of(token) if e.reason in ("expired", "revoked") else ""
            ) from None
        ending = self._token_ending(claims)
        if ending is not None:
            raise ending
        return claims

    def _token_ending(self, claims: TokenClaims) -> Refused | None:
        """Why a token admitted earlier no longer holds (revoked, or expired by
        ``tokens.token_expired``, the rule ``verify`` applies), if so."""
        if claims.token_id in self.revoked:
            return token_refusal(InvalidToken("revoked", ""), claims.token_id)
        if token_expired(claims.expires.timestamp(), self.clock()):
            return token_refusal(InvalidToken("expired", ""), claims.token_id)
        return None

    def _lease_ending(self, lease: Lease) -> Refused | None:
        """Why the token ``lease`` was admitted with no longer holds, judged as a new
        stream's would be (``verify`` now, then ``_token_ending``), if so; None for a
        lease without a token."""
        if lease.claims is None:
            return None
        try:
            self._verified(lease.token)
        except Refused as refusal:
            return refusal
        return None

    # -- renewal -----------------------------------------------------------------------

    def due_time(self, certificate: IssuedCertificate) -> float:
        """When ``certificate`` is renewed (seconds since the epoch)."""
        return certificate.renew_at(self.renew_fraction).timestamp()

    def forget(self, lease: Lease) -> None:
        """``lease`` is no longer renewed."""
        self.leases.discard(lease)

    def next_due(self) -> float | None:
        """When the next lease ``run`` renews is due (None: none; polled leases are
        renewed by their ``refresh``)."""
        return min((lease.due for lease in self.leases if not lease.polled), default=None)

    def renew_due(self, limit: int = 0) -> int:
        """Renew up to ``limit`` (0: every) lease due now (not the polled ones, see
        ``Lease.refresh``); returns how many were handled (renewed, ended or put off
        after a failed issue)."""
        now = self.clock()
        due = sorted(
            (lease for lease in self.leases if lease.due <= now and not lease.polled),
            key=lambda x: x.due,
        )
        if limit:
            due = due[:limit]
        for lease in due:
            self.renew(lease, now)
        return len(due)

    def renew(self, lease: Lease, now: float) -> None:
        """Renew ``lease`` (due at ``now``): a new key and certificate, or its end when
        its token no longer holds (``verify`` run again on it: forged by today's key,
        expired or revoked: the refusal a new stream with it would get); after a failed
        issue it is due again ``RETRY_AFTER`` seconds later."""
        if lease.claims is not None:
            ending = self._lease_ending(lease)
            if ending is not None:
                log.warning(
                    "not renewing %s: %s",
                    lease.certificate.spiffe_id,
                    ending.message,
                    extra={"node": lease.node.node_id, "reason": ending.reason},
                )
                lease.end(ending)
                return
        try:
            certificate = self.issue(lease.node.namespace, lease.node.service)
        except Exception:  # the CA failed: keep the current certificate, try again soon
            log.exception(
                "cannot renew %s; trying again in %g s",
                lease.certificate.spiffe_id,
                RETRY_AFTER,
                extra={"node": lease.node.node_id},
            )
            lease.due = now + RETRY_AFTER
            return
        self.renewed_total += 1
        lease.replace(certificate)
        log.info(
            "identity renewed: %s serial %s until %s",
            certificate.spiffe_id,
            certificate.serial,
            certificate.not_after.isoformat(),
            extra={"node": lease.node.node_id},
        )

    async def run(self) -> None:
        """Renew leases as they fall due, forever (a task of the daemon)."""
        while True:
            self._changed.clear()
            while self.renew_due(RENEWALS_PER_TURN):
                await asyncio.sleep(0)
            due = self.next_due()
            delay = None if due is None else max(0.0, due - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), delay)

    # -- settings ----------------------------------------------------------------------

    def update(
        self,
        *,
        issue: Issue,
        verify: Verify,
        renew_fraction: float,
        revoked: frozenset[str],
        reissue: bool,
        reverify: bool = False,
    ) -> None:
        """New ``[mesh.ca]`` settings (SIGHUP): streams of newly revoked tokens end now;
        with ``reverify`` (another token key: ``verify`` now judges tokens differently)
        every token lease's token is verified again with the new ``verify`` and the
        streams whose token fails end now (``token_forged`` for a token of the old key);
        with ``reissue`` (another signing authority) every remaining lease is re-issued
        within ``REISSUE_SPREAD`` seconds."""
        self.issue, self.verify = issue, verify
        self.renew_fraction = renew_fraction
        newly = revoked - self.revoked
        self.revoked = revoked
        if newly or reverify:
            for lease in sorted(self.leases, key=lambda x: x.node.node_id):
                if lease.claims is None:
                    continue
                if lease.claims.token_id in newly:
                    refusal: Refused | None = token_refusal(
                        InvalidToken("revoked", ""), lease.claims.token_id
                    )
                else:
                    refusal = self._lease_ending(lease) if reverify else None
                if refusal is not None:
                    log.warning(
                        "ending the stream of %s: %s",
                        lease.certificate.spiffe_id,
                        refusal.message,
                        extra={"node": lease.node.node_id, "reason": refusal.reason},
                    )
                    lease.end(refusal)
        if reissue and self.leases:
            now = self.clock()
            ordered = sorted(self.leases, key=lambda x: x.due)
            step = REISSUE_SPREAD / len(ordered)
            for i, lease in enumerate(ordered):
                lease.due = min(lease.due, now + i * step)
            log.info(
                "re-issuing %d identities from the new signing authority within %g s",
                len(ordered),
                REISSUE_SPREAD,
            )
        self._changed.set()


# -- the daemon's CA ---------------------------------------------------------------------


class MeshAuthority:
    """The daemon's CA of ``[mesh.ca]`` and what it gives the streams: the
    ``CertificateAuthority`` and ``TokenAuthority`` built from ``mesh`` (raises CAError,
    naming the file and the reason, when either cannot be used), the ``Identities``
    serving from them, and ``mesh`` with the trust bundle set (``MeshTLS.bundle``: the
    translation's ROOTCA)."""

    def __init__(self, mesh: MeshConfig, *, clock: Callable[[], float] = time.time) -> None:
        ca_settings = mesh.ca
        if ca_settings is None:
            raise ValueError("MeshAuthority needs [mesh.ca]")
        self.ca = CertificateAuthority(ca_settings, mesh.mtls.trust_domain)
        self.tokens = TokenAuthority(ca_settings)
        self.identities = Identities(
            issue=self.ca.issue,
            verify=self.tokens.verify,
            trust_domain=mesh.mtls.trust_domain,
            renew_fraction=ca_settings.renew_fraction,
            revoked=frozenset(ca_settings.revoked_tokens),
            clock=clock,
        )
        self.mesh = with_bundle(mesh, self.ca)
        log.info(
            "mesh CA: authorities %s, signing %s",
            ", ".join(self.ca.authority_names),
            self.ca.signing_name,
        )

    def reconfigure(self, mesh: MeshConfig) -> MeshConfig | None:
        """New ``[mesh]`` settings (SIGHUP): the CA and tokens built again from its
        ``[mesh.ca]`` and handed to ``identities`` (revoked tokens' streams end now; a
        new token key ends every stream whose token it does not verify; a new signing
        authority — another signing certificate, even under the same name and files —
        re-issues every identity, spread out; an authority added or removed changes the
        bundle), and ``mesh`` with the new bundle. None, keeping
        everything as it was (logged), when the new CA cannot be used or ``[mesh.ca]``
        was removed (turning xdsd's CA on or off needs a restart)."""
        new = mesh.ca
        if new is None:
            log.error("[mesh.ca] removed: turning xdsd's CA off needs a restart; keeping it")
            return None
        try:
            ca = CertificateAuthority(new, mesh.mtls.trust_domain)
            tokens = TokenAuthority(new)
        except CAError as e:
            log.error("[mesh.ca] refused, keeping the current CA: %s", e)
            return None
        old = self.ca
        # Decided by what signs, not by the settings naming it: a CA renewed in place
        # (same name and files, new certificate) or a generated one made again (its
        # state directory deleted) is another signer though the settings are the same.
        reissue = (
            ca.signer_pem() != old.signer_pem()
            or new.key_type != old.config.key_type
            or ca.trust_domain != old.trust_domain
        )
        reverify = tokens.public_key != self.tokens.public_key
        self.ca, self.tokens = ca, tokens
        self.identities.trust_domain = ca.trust_domain
        self.identities.update(
            issue=ca.issue,
            verify=tokens.verify,
            renew_fraction=new.renew_fraction,
            revoked=frozenset(new.revoked_tokens),
            reissue=reissue,
            reverify=reverify,
        )
        if ca.bundle_pem() != old.bundle_pem():
            log.info("mesh CA: trust bundle now %s", ", ".join(ca.authority_names))
        self.mesh = with_bundle(mesh, ca)
        return self.mesh


def with_bundle(mesh: MeshConfig, ca: CertificateAuthority) -> MeshConfig:
    """``mesh`` whose mutual TLS trusts ``ca``'s bundle (``MeshTLS.bundle``)."""
    return dataclasses.replace(
        mesh, mtls=dataclasses.replace(mesh.mtls, issued=True, bundle=ca.bundle_pem())
    )
