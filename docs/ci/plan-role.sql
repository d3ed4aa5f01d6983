-- A read-only role for the pull-request (plan) jobs of docs/ci/: `snapctl plan --no-secrets`
-- reads the state (without its lock) and writes nothing, so SELECT is all it needs. Give the
-- plan job this role's URL (secret SNAPCTL_STATE_READONLY) and keep the read-write URL
-- (SNAPCTL_STATE) for the apply job: a pull request then cannot write the state.
-- Run as a superuser (or a role with CREATEROLE that owns the schema), once the schema
-- exists (after the first `snapctl workspace new`). Here the database is `snapctl` and the
-- role snapctl applies with is `snapctl`: put your names, and a password of your own.
CREATE ROLE snapctl_plan LOGIN PASSWORD 'change-me';
GRANT CONNECT ON DATABASE snapctl TO snapctl_plan;
GRANT USAGE ON SCHEMA snapctl TO snapctl_plan;
GRANT SELECT ON ALL TABLES IN SCHEMA snapctl TO snapctl_plan;
-- Tables a later snapctl adds (its schema migrations run as the applying role) are readable too:
ALTER DEFAULT PRIVILEGES FOR ROLE snapctl IN SCHEMA snapctl GRANT SELECT ON TABLES TO snapctl_plan;
-- And every transaction of this role is read-only, whatever it is granted later.
ALTER ROLE snapctl_plan SET default_transaction_read_only = on;
