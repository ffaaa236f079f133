"""Read-only views of a ledger for auditors: books as of a point, histories, verification, exports.

Everything here opens the log read-only and writes neither the database nor positions.json: only
its own cache beside the log (`ledger.audit.checkpoints`: books every K events, and the point
`verify` last checked the chain to), from which the read commands start (`ledger.audit.vouched`).

Two levels of checking:
- `ChainVerifier(track_versions=False)` (cheap, constant memory, run by the commands that
  trust the log): every row follows the one before it (gapless seq), its hash chains from the
  previous one, and its body decodes. It runs in the same pass as the fold, so a trusted
  read costs one read of the log.
- `verify_log` (the `verify` command): the library's full `ChainVerifier` (adds stream versions),
  the ledger's rules replayed in order (`ledger.audit_rules`), and positions.json against the
  fold at its seq.
"""
