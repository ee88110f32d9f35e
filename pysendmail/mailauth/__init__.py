"""Email authentication: SPF, DKIM, DMARC and ARC checks, DKIM signing, and the
Authentication-Results header (RFC 8601) that reports them."""
