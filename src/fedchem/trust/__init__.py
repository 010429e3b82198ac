"""Trust without seeing: identities and signatures, site policies, differential privacy,
the audit ledger."""
