-- The SQLite schema (version 5) as SQLAlchemy's Table.create wrote it, before graven.db
-- became plain SQL on stdlib sqlite3: homes made then must keep working.
CREATE TABLE graven_meta (
	"key" VARCHAR(64) NOT NULL,
	value TEXT NOT NULL,
	PRIMARY KEY ("key")
);
CREATE TABLE artifacts (
	digest VARCHAR(71) NOT NULL,
	name VARCHAR(200) NOT NULL,
	"commit" VARCHAR(64),
	repository TEXT,
	revision TEXT,
	pipeline_digest VARCHAR(71),
	source_date_epoch BIGINT NOT NULL,
	file_count INTEGER NOT NULL,
	total_size BIGINT NOT NULL,
	origin VARCHAR(16) NOT NULL,
	created_at VARCHAR(32) NOT NULL,
	PRIMARY KEY (digest)
);
CREATE TABLE builds (
	id INTEGER NOT NULL,
	digest VARCHAR(71) NOT NULL,
	name VARCHAR(200) NOT NULL,
	"commit" VARCHAR(64) NOT NULL,
	repository TEXT NOT NULL,
	revision TEXT NOT NULL,
	pipeline_digest VARCHAR(71) NOT NULL,
	started_at VARCHAR(32) NOT NULL,
	finished_at VARCHAR(32) NOT NULL,
	builder TEXT NOT NULL,
	graven_version VARCHAR(32) NOT NULL,
	invocation_id VARCHAR(64) NOT NULL,
	PRIMARY KEY (id)
);
CREATE INDEX ix_builds_digest ON builds (digest);
CREATE TABLE git_blob_cache (
	git_oid VARCHAR(64) NOT NULL,
	sha256 VARCHAR(64) NOT NULL,
	size BIGINT NOT NULL,
	PRIMARY KEY (git_oid)
);
CREATE TABLE attestations (
	id INTEGER NOT NULL,
	artifact_digest VARCHAR(71) NOT NULL,
	envelope_digest VARCHAR(71) NOT NULL,
	keyid VARCHAR(64) NOT NULL,
	created_at VARCHAR(32) NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (artifact_digest, envelope_digest)
);
CREATE INDEX ix_attestations_artifact_digest ON attestations (artifact_digest);
CREATE TABLE log_entries (
	idx BIGINT NOT NULL,
	entry TEXT NOT NULL,
	leaf_hash VARCHAR(64) NOT NULL,
	time VARCHAR(32) NOT NULL,
	event VARCHAR(32) NOT NULL,
	artifact VARCHAR(71),
	env VARCHAR(128),
	PRIMARY KEY (idx)
);
CREATE INDEX ix_log_entries_time ON log_entries (time);
CREATE INDEX ix_log_entries_env ON log_entries (env);
CREATE INDEX ix_log_entries_artifact ON log_entries (artifact);
CREATE TABLE log_checkpoints (
	size BIGINT NOT NULL,
	root VARCHAR(64) NOT NULL,
	note TEXT NOT NULL,
	PRIMARY KEY (size)
);
CREATE TABLE log_state (
	id INTEGER NOT NULL,
	size BIGINT NOT NULL,
	frontier TEXT NOT NULL,
	PRIMARY KEY (id)
);
CREATE TABLE deploy_envs (
	name VARCHAR(64) NOT NULL,
	path TEXT NOT NULL,
	live_digest VARCHAR(71),
	live_deployment INTEGER,
	previous_digest VARCHAR(71),
	held BOOLEAN NOT NULL,
	held_digest VARCHAR(71),
	hold_reason TEXT,
	updated_at VARCHAR(32) NOT NULL,
	PRIMARY KEY (name)
);
CREATE TABLE deployments (
	id INTEGER NOT NULL,
	env VARCHAR(64) NOT NULL,
	digest VARCHAR(71) NOT NULL,
	kind VARCHAR(16) NOT NULL,
	source_env VARCHAR(64),
	previous_digest VARCHAR(71),
	actor TEXT NOT NULL,
	started_at VARCHAR(32) NOT NULL,
	finished_at VARCHAR(32),
	result VARCHAR(16) NOT NULL,
	health VARCHAR(16) NOT NULL,
	override BOOLEAN NOT NULL,
	reason TEXT,
	detail TEXT,
	settings TEXT,
	PRIMARY KEY (id)
);
CREATE INDEX ix_deployments_digest ON deployments (digest);
CREATE INDEX ix_deployments_env ON deployments (env);
CREATE TABLE rejections (
	digest VARCHAR(71) NOT NULL,
	reason TEXT NOT NULL,
	actor TEXT NOT NULL,
	created_at VARCHAR(32) NOT NULL,
	PRIMARY KEY (digest)
);
CREATE TABLE drift_state (
	env VARCHAR(64) NOT NULL,
	digest VARCHAR(71),
	keys TEXT NOT NULL,
	count INTEGER NOT NULL,
	since VARCHAR(32),
	checked_at VARCHAR(32) NOT NULL,
	alerted TEXT NOT NULL,
	PRIMARY KEY (env)
);
CREATE TABLE drift_events (
	id INTEGER NOT NULL,
	env VARCHAR(64) NOT NULL,
	digest VARCHAR(71),
	event VARCHAR(16) NOT NULL,
	time VARCHAR(32) NOT NULL,
	count INTEGER NOT NULL,
	result VARCHAR(16) NOT NULL,
	detail TEXT,
	PRIMARY KEY (id)
);
CREATE INDEX ix_drift_events_env ON drift_events (env);
