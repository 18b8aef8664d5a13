"""devpi-tokens: scoped, revocable macaroon tokens for devpi."""
