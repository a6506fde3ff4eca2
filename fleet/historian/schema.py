"""The historian's one schema, for SQLite and PostgreSQL alike, as numbered migrations.

The SQL is the subset both understand: BIGINT, DOUBLE PRECISION, TEXT and BOOLEAN columns (SQLite maps the
names to its affinities), `ON CONFLICT` upserts. Times are integer microseconds since the epoch (UTC), the
agent's capture times unless a column says `received`. A new version appends a migration; a database
newer than this code knows is refused, never written to.
"""
from __future__ import annotations

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # version 1: machines' current picture, alerts once by id, telemetry raw and in buckets, rejections
    (
        """CREATE TABLE machines (
            device_id TEXT PRIMARY KEY,
            first_seen_us BIGINT NOT NULL,   -- received: when this service first heard of it
            last_seen_us BIGINT NOT NULL,    -- received: the latest message of any kind
            status TEXT,                     -- online | offline (retained, the last will says offline)
            status_us BIGINT,                -- received
            state TEXT,                      -- normal | warning | alarm | sensor_fault (the retained state)
            state_since_us BIGINT,
            state_us BIGINT,                 -- the state payload's timestamp: an older one never overwrites
            score DOUBLE PRECISION,
            top_channel TEXT,
            reason TEXT,
            model_id TEXT,
            model_sha256 TEXT,
            state_json TEXT,
            health_problem BOOLEAN,
            health_us BIGINT,
            health_json TEXT
        )""",
        """CREATE TABLE alerts (
            id TEXT PRIMARY KEY,             -- the agent's alert id: stored once, whatever arrives twice
            device_id TEXT NOT NULL,
            time_us BIGINT NOT NULL,
            state TEXT NOT NULL,
            previous_state TEXT NOT NULL,
            score DOUBLE PRECISION,
            warning_threshold DOUBLE PRECISION NOT NULL,
            alarm_threshold DOUBLE PRECISION NOT NULL,
            top_channel TEXT,
            reason TEXT,
            model_id TEXT NOT NULL,
            model_sha256 TEXT NOT NULL,
            defect TEXT,                     -- the diagnosis' kind, when the feature set gives one
            payload TEXT NOT NULL,           -- the alert as received (JSON)
            received_us BIGINT NOT NULL
        )""",
        "CREATE INDEX alerts_by_device ON alerts (device_id, time_us)",
        "CREATE INDEX alerts_by_time ON alerts (time_us)",
        """CREATE TABLE telemetry (
            device_id TEXT NOT NULL,
            time_us BIGINT NOT NULL,
            snapshot BIGINT NOT NULL,
            state TEXT NOT NULL,
            score DOUBLE PRECISION,
            payload TEXT NOT NULL,
            PRIMARY KEY (device_id, time_us)
        )""",
        """CREATE TABLE telemetry_buckets (
            device_id TEXT NOT NULL,
            name TEXT NOT NULL,              -- score, features/<channel>, channel_errors/<channel>, channel_features/<channel>/<feature>
            bucket_us BIGINT NOT NULL,       -- the bucket's start
            bucket_s BIGINT NOT NULL,
            count BIGINT NOT NULL,
            value_min DOUBLE PRECISION NOT NULL,
            value_max DOUBLE PRECISION NOT NULL,
            value_sum DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (device_id, name, bucket_us)
        )""",
        """CREATE TABLE rejections (
            reason TEXT PRIMARY KEY,
            count BIGINT NOT NULL,
            last_topic TEXT NOT NULL,
            last_detail TEXT NOT NULL,
            last_us BIGINT NOT NULL
        )""",
    ),
    # version 2: the dashboard's users and API tokens, alerts acknowledged and closed, machines' site and tags
    (
        """CREATE TABLE users (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL,              -- viewer | operator | admin
            password_hash TEXT NOT NULL,     -- scrypt$n$r$p$salt$hash (fleet/web/credentials.py), never shown
            created_us BIGINT NOT NULL
        )""",
        """CREATE TABLE api_tokens (
            token_hash TEXT PRIMARY KEY,     -- sha256 of the token: the token itself is printed once, never stored
            user_name TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
            created_us BIGINT NOT NULL
        )""",
        """CREATE TABLE web_sessions (
            session_hash TEXT PRIMARY KEY,   -- sha256 of the id in the signed cookie: logout deletes the row, so a
            user_name TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,  -- copied cookie is dead with it
            created_us BIGINT NOT NULL,
            expires_us BIGINT NOT NULL
        )""",
        "ALTER TABLE alerts ADD COLUMN acknowledged_by TEXT",
        "ALTER TABLE alerts ADD COLUMN acknowledged_us BIGINT",  # received: the dashboard's clock
        "ALTER TABLE alerts ADD COLUMN ack_comment TEXT",
        "ALTER TABLE alerts ADD COLUMN closed_by TEXT",
        "ALTER TABLE alerts ADD COLUMN closed_us BIGINT",
        "ALTER TABLE alerts ADD COLUMN failure_mode TEXT",   # fleet.historian.alert_actions.FAILURE_MODES
        "ALTER TABLE alerts ADD COLUMN close_comment TEXT",
        "CREATE INDEX alerts_open ON alerts (closed_us, time_us)",
        # Raw telemetry is rolled up into telemetry_buckets while it is still kept raw, so that a chart of a long
        # span reads buckets only; rolled_up marks the rows counted there (a late row is rolled up when it comes).
        "ALTER TABLE telemetry ADD COLUMN rolled_up BOOLEAN NOT NULL DEFAULT FALSE",
        "CREATE INDEX telemetry_not_rolled_up ON telemetry (device_id, time_us) WHERE NOT rolled_up",
        "ALTER TABLE machines ADD COLUMN site TEXT",
        "ALTER TABLE machines ADD COLUMN tags TEXT",         # ,pump,line-3, (commas around each: one LIKE finds a tag)
    ),
    # version 3: staged rollouts of signed bundles (fleet/rollout.py), and each machine's retained model report
    (
        "ALTER TABLE machines ADD COLUMN model_json TEXT",  # cm/<device>/model as received: active, previous, rollout
        "ALTER TABLE machines ADD COLUMN model_us BIGINT",  # the report's timestamp: an older one never overwrites
        """CREATE TABLE rollouts (
            id TEXT PRIMARY KEY,
            bundle_sha256 TEXT NOT NULL,     -- the archive's (edge.model.store.pack): what desired documents name
            bundle_id TEXT NOT NULL,         -- the model card's id, for people
            archive TEXT NOT NULL,           -- the archive, base64: cm-fleet serve publishes it, retained, once
            archive_published_us BIGINT,
            selector TEXT NOT NULL,
            canary_percent DOUBLE PRECISION NOT NULL,
            wave_wait_s DOUBLE PRECISION NOT NULL,
            max_failed_percent DOUBLE PRECISION NOT NULL,
            device_timeout_s DOUBLE PRECISION NOT NULL,
            probation TEXT NOT NULL,         -- the desired documents' probation settings (JSON, {} for the agents' own)
            state TEXT NOT NULL,             -- running | paused | halted | aborted | completed | rolling_back | rolled_back
            reason TEXT,
            created_by TEXT NOT NULL,
            created_us BIGINT NOT NULL,
            updated_us BIGINT NOT NULL
        )""",
        """CREATE TABLE rollout_waves (
            rollout_id TEXT NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
            number BIGINT NOT NULL,          -- 1 is the canary
            size BIGINT NOT NULL,
            started_us BIGINT,               -- NULL until its desired documents are published
            settled_us BIGINT,               -- every device of it active, rejected, rolled back or timed out
            PRIMARY KEY (rollout_id, number)
        )""",
        """CREATE TABLE rollout_devices (
            rollout_id TEXT NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
            device_id TEXT NOT NULL,
            wave BIGINT NOT NULL,
            status TEXT NOT NULL,            -- queued | sent | the agent's (edge.rollout.STATUSES) | timed_out
            reason TEXT,
            previous_bundle TEXT,            -- the bundle it ran when its desired document was sent: for rollback
            rollback_status TEXT,            -- after `cm-fleet rollout rollback`: the agent's status of going back
            rollback_reason TEXT,
            sent_us BIGINT,
            report_us BIGINT,                -- the agent's report's `updated`: an older one never overwrites
            updated_us BIGINT NOT NULL,
            PRIMARY KEY (rollout_id, device_id)
        )""",
        "CREATE INDEX rollout_devices_by_device ON rollout_devices (device_id)",
    ),
    # version 4: commissioning (fleet/commissioning.py): each machine's baseline, its training and its phase; a
    # repair recorded when an alert is closed starts a new baseline
    (
        """CREATE TABLE commissioning (
            device_id TEXT PRIMARY KEY,
            phase TEXT NOT NULL,             -- learning | training | probation | monitoring
            phase_us BIGINT NOT NULL,        -- received: when the phase began
            baseline_start_us BIGINT NOT NULL,  -- capture time: the baseline is the telemetry from here on
            baseline_card TEXT,              -- the card id whose feature spec the model is trained for
            started_by TEXT NOT NULL,        -- what started this baseline: the first `learning`, a repair, a person
            reason TEXT,                     -- learning: why the baseline was refused; training: the step it is at
            progress TEXT,                   -- learning: JSON {snapshots, days, min_snapshots, min_days, checked_us}
            requested_by TEXT,               -- a request to train now (cm-fleet commission, the dashboard)
            requested_us BIGINT,
            held BOOLEAN NOT NULL DEFAULT FALSE,  -- an attempt failed: no automatic retry on this baseline
            bundle_sha256 TEXT,              -- the trained bundle's archive, as its rollout names it
            rollout_id TEXT,
            updated_us BIGINT NOT NULL
        )""",
        "CREATE INDEX commissioning_by_phase ON commissioning (phase)",
        "ALTER TABLE alerts ADD COLUMN repair TEXT",  # fleet.historian.alert_book.REPAIRS: closing with one learns again
    ),
)

VERSION = len(MIGRATIONS)

SCHEMA_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT PRIMARY KEY, applied_us BIGINT NOT NULL)"
