#!/bin/sh
# Login roles of the production shape (docker-compose.yml), run by the postgres image on a fresh
# volume (/docker-entrypoint-initdb.d); on an existing one run it by hand:
#   docker compose exec postgres sh /docker-entrypoint-initdb.d/10-medparse-roles.sh
# Idempotent. The group roles' privileges and policies come from the migrations (0003, 0007):
# - medparse_gateway: member of medparse_app only. Row-level security shows it one tenant per
#   transaction (medparse.tenant_id); no setting widens that, and it cannot SET ROLE medparse_system.
# - medparse_worker: member of medparse_system, whose policies see every tenant (dispatcher,
#   sweeper, retention purge, webhook delivery, the CLI).
# Neither is a superuser, owns a table, or has BYPASSRLS; POSTGRES_USER owns the schema and migrates.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v gateway_password="$MEDPARSE_GATEWAY_DB_PASSWORD" -v worker_password="$MEDPARSE_WORKER_DB_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE %I NOLOGIN NOSUPERUSER NOBYPASSRLS', r) FROM unnest(ARRAY['medparse_app', 'medparse_system']) r
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) \gexec
SELECT format('CREATE ROLE medparse_gateway LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE IN ROLE medparse_app PASSWORD %L', :'gateway_password')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'medparse_gateway') \gexec
SELECT format('CREATE ROLE medparse_worker LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE IN ROLE medparse_system PASSWORD %L', :'worker_password')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'medparse_worker') \gexec
SQL
