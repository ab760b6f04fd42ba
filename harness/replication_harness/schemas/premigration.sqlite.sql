PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE rr_schema (
	version INTEGER NOT NULL, 
	PRIMARY KEY (version)
);
INSERT INTO rr_schema VALUES(1);
CREATE TABLE rr_events (
	id VARCHAR(255) NOT NULL, 
	received_at DATETIME NOT NULL, 
	timestamp DATETIME NOT NULL, 
	action VARCHAR(16) NOT NULL, 
	repository VARCHAR(255) NOT NULL, 
	tag VARCHAR(128), 
	digest VARCHAR(160), 
	media_type VARCHAR(255), 
	status VARCHAR(16) NOT NULL, 
	attempts INTEGER NOT NULL, 
	next_attempt_at DATETIME NOT NULL, 
	lease_owner VARCHAR(64), 
	lease_expires_at DATETIME, 
	last_error TEXT, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO rr_events VALUES('e0','2026-11-28 07:00:00.000000','2026-11-28 06:00:00.000000','push','group/app','1.0','sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa','m','done',1,'2026-11-28 07:00:00.000000',NULL,NULL,NULL,'2026-11-28 07:00:00.000000');
INSERT INTO rr_events VALUES('e1','2026-11-28 07:00:00.000000','2026-11-28 06:00:01.000000','push','group/app','1.1','sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa','m','done',1,'2026-11-28 07:00:00.000000',NULL,NULL,NULL,'2026-11-28 07:00:00.000000');
INSERT INTO rr_events VALUES('e2','2026-11-28 07:00:00.000000','2026-11-28 06:00:02.000000','push','group/app','1.2','sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa','m','pending',0,'2026-11-28 07:00:00.000000',NULL,NULL,NULL,'2026-11-28 07:00:00.000000');
INSERT INTO rr_events VALUES('e3','2026-11-28 07:00:00.000000','2026-11-28 06:00:03.000000','push','group/app','1.3','sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa','m','pending',0,'2026-11-28 07:00:00.000000',NULL,NULL,NULL,'2026-11-28 07:00:00.000000');
INSERT INTO rr_events VALUES('e4','2026-11-28 07:00:00.000000','2026-11-28 06:00:04.000000','push','group/app','1.4','sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa','m','pending',0,'2026-11-28 07:00:00.000000',NULL,NULL,NULL,'2026-11-28 07:00:00.000000');
CREATE TABLE rr_repository_state (
	repository VARCHAR(255) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	tags_primary INTEGER, 
	tags_secondary INTEGER, 
	checksum_primary VARCHAR(64), 
	checksum_secondary VARCHAR(64), 
	last_sync_at DATETIME, 
	last_error TEXT, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (repository)
);
INSERT INTO rr_repository_state VALUES('group/app','failed',NULL,NULL,NULL,NULL,NULL,'boom','2026-11-28 07:00:00.000000');
CREATE TABLE rr_failed_layers (
	id INTEGER NOT NULL, 
	dag_id VARCHAR(255) NOT NULL, 
	run_id VARCHAR(255) NOT NULL, 
	task_id VARCHAR(255), 
	map_index INTEGER, 
	repository VARCHAR(255) NOT NULL, 
	digest VARCHAR(160) NOT NULL, 
	size BIGINT, 
	status INTEGER, 
	code VARCHAR(64), 
	error TEXT, 
	recorded_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO rr_failed_layers VALUES(1,'registry_reconcile','run1','copy_blobs',0,'group/app','sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb',10,500,'UNKNOWN','boom','2026-11-28 07:00:00.000000');
CREATE TABLE rr_leases (
	resource VARCHAR(512) NOT NULL, 
	owner VARCHAR(64) NOT NULL, 
	expires_at DATETIME NOT NULL, 
	acquired_at DATETIME NOT NULL, 
	detail JSON, 
	PRIMARY KEY (resource)
);
INSERT INTO rr_leases VALUES('repository:group/app','old-writer','2026-11-28 07:10:00.000000','2026-11-28 07:00:00.000000','null');
CREATE TABLE rr_runs (
	run_id VARCHAR(255) NOT NULL, 
	dag_id VARCHAR(255) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	summary JSON NOT NULL, 
	finished_at DATETIME NOT NULL, 
	PRIMARY KEY (run_id, dag_id)
);
INSERT INTO rr_runs VALUES('run1','registry_reconcile','failed','{"copied": 3}','2026-11-28 07:00:00.000000');
CREATE TABLE rr_copied_bytes (
	id INTEGER NOT NULL, 
	dag_id VARCHAR(255) NOT NULL, 
	run_id VARCHAR(255) NOT NULL, 
	task_id VARCHAR(255) NOT NULL, 
	map_index INTEGER, 
	bytes BIGINT NOT NULL, 
	recorded_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO rr_copied_bytes VALUES(1,'registry_reconcile','run1','copy_blobs',0,12345,'2026-11-28 07:00:00.000000');
CREATE TABLE rr_push_latency (
	event_id VARCHAR(255) NOT NULL, 
	repository VARCHAR(255) NOT NULL, 
	pushed_at DATETIME NOT NULL, 
	acknowledged_at DATETIME NOT NULL, 
	seconds FLOAT NOT NULL, 
	PRIMARY KEY (event_id)
);
INSERT INTO rr_push_latency VALUES('e0','group/app','2026-11-28 06:00:00.000000','2026-11-28 07:00:00.000000',3600.0);
INSERT INTO rr_push_latency VALUES('e1','group/app','2026-11-28 06:00:01.000000','2026-11-28 07:00:00.000000',3599.0);
CREATE TABLE rr_dag_outcomes (
	id INTEGER NOT NULL, 
	dag_id VARCHAR(255) NOT NULL, 
	run_id VARCHAR(255) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	finished_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO rr_dag_outcomes VALUES(1,'registry_reconcile','run1','failed','2026-11-28 07:00:00.000000');
CREATE TABLE rr_alerts (
	id INTEGER NOT NULL, 
	dag_id VARCHAR(255) NOT NULL, 
	run_id VARCHAR(255) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	subject TEXT NOT NULL, 
	notifier VARCHAR(255), 
	sent_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO rr_alerts VALUES(1,'registry_reconcile','run1','failed','subject',NULL,'2026-11-28 07:00:00.000000');
CREATE INDEX ix_rr_events_status_next ON rr_events (status, next_attempt_at);
CREATE INDEX ix_rr_push_latency_ack ON rr_push_latency (acknowledged_at);
CREATE INDEX ix_rr_dag_outcomes_dag ON rr_dag_outcomes (dag_id, id);
COMMIT;
