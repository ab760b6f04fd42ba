--
-- PostgreSQL database dump
--


-- Dumped from database version 15.18 (Debian 15.18-0+deb12u1)
-- Dumped by pg_dump version 15.18 (Debian 15.18-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

SET default_table_access_method = heap;

--
-- Name: rr_alerts; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.rr_alerts (
    id integer NOT NULL,
    dag_id character varying(255) NOT NULL,
    run_id character varying(255) NOT NULL,
    state character varying(16) NOT NULL,
    subject text NOT NULL,
    notifier character varying(255),
    sent_at timestamp with time zone NOT NULL
);


--
-- Name: rr_alerts_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.rr_alerts_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: rr_alerts_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.rr_alerts_id_seq OWNED BY public.rr_alerts.id;


--
-- Name: rr_copied_bytes; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.rr_copied_bytes (
    id integer NOT NULL,
    dag_id character varying(255) NOT NULL,
    run_id character varying(255) NOT NULL,
    task_id character varying(255) NOT NULL,
    map_index integer,
    bytes bigint NOT NULL,
    recorded_at timestamp with time zone NOT NULL
);


--
-- Name: rr_copied_bytes_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.rr_copied_bytes_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: rr_copied_bytes_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.rr_copied_bytes_id_seq OWNED BY public.rr_copied_bytes.id;


--
-- Name: rr_dag_outcomes; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.rr_dag_outcomes (
    id integer NOT NULL,
    dag_id character varying(255) NOT NULL,
    run_id character varying(255) NOT NULL,
    state character varying(16) NOT NULL,
    finished_at timestamp with time zone NOT NULL
);


--
-- Name: rr_dag_outcomes_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.rr_dag_outcomes_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: rr_dag_outcomes_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.rr_dag_outcomes_id_seq OWNED BY public.rr_dag_outcomes.id;


--
-- Name: rr_events; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.rr_events (
    id character varying(255) NOT NULL,
    received_at timestamp with time zone NOT NULL,
    "timestamp" timestamp with time zone NOT NULL,
    action character varying(16) NOT NULL,
    repository character varying(255) NOT NULL,
    tag character varying(128),
    digest character varying(160),
    media_type character varying(255),
    status character varying(16) NOT NULL,
    attempts integer NOT NULL,
    next_attempt_at timestamp with time zone NOT NULL,
    lease_owner character varying(64),
    lease_expires_at timestamp with time zone,
    last_error text,
    updated_at timestamp with time zone NOT NULL
);


--
-- Name: rr_failed_layers; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.rr_failed_layers (
    id integer NOT NULL,
    dag_id character varying(255) NOT NULL,
    run_id character varying(255) NOT NULL,
    task_id character varying(255),
    map_index integer,
    repository character varying(255) NOT NULL,
    digest character varying(160) NOT NULL,
    size bigint,
    status integer,
    code character varying(64),
    error text,
    recorded_at timestamp with time zone NOT NULL
);


--
-- Name: rr_failed_layers_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.rr_failed_layers_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: rr_failed_layers_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.rr_failed_layers_id_seq OWNED BY public.rr_failed_layers.id;


--
-- Name: rr_leases; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.rr_leases (
    resource character varying(512) NOT NULL,
    owner character varying(64) NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    acquired_at timestamp with time zone NOT NULL,
    detail json
);


--
-- Name: rr_push_latency; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.rr_push_latency (
    event_id character varying(255) NOT NULL,
    repository character varying(255) NOT NULL,
    pushed_at timestamp with time zone NOT NULL,
    acknowledged_at timestamp with time zone NOT NULL,
    seconds double precision NOT NULL
);


--
-- Name: rr_repository_state; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.rr_repository_state (
    repository character varying(255) NOT NULL,
    state character varying(16) NOT NULL,
    tags_primary integer,
    tags_secondary integer,
    checksum_primary character varying(64),
    checksum_secondary character varying(64),
    last_sync_at timestamp with time zone,
    last_error text,
    updated_at timestamp with time zone NOT NULL
);


--
-- Name: rr_runs; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.rr_runs (
    run_id character varying(255) NOT NULL,
    dag_id character varying(255) NOT NULL,
    state character varying(16) NOT NULL,
    summary json NOT NULL,
    finished_at timestamp with time zone NOT NULL
);


--
-- Name: rr_schema; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.rr_schema (
    version integer NOT NULL
);


--
-- Name: rr_schema_version_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.rr_schema_version_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: rr_schema_version_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.rr_schema_version_seq OWNED BY public.rr_schema.version;


--
-- Name: rr_alerts id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.rr_alerts ALTER COLUMN id SET DEFAULT nextval('public.rr_alerts_id_seq'::regclass);


--
-- Name: rr_copied_bytes id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.rr_copied_bytes ALTER COLUMN id SET DEFAULT nextval('public.rr_copied_bytes_id_seq'::regclass);


--
-- Name: rr_dag_outcomes id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.rr_dag_outcomes ALTER COLUMN id SET DEFAULT nextval('public.rr_dag_outcomes_id_seq'::regclass);


--
-- Name: rr_failed_layers id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.rr_failed_layers ALTER COLUMN id SET DEFAULT nextval('public.rr_failed_layers_id_seq'::regclass);


--
-- Name: rr_schema version; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.rr_schema ALTER COLUMN version SET DEFAULT nextval('public.rr_schema_version_seq'::regclass);


--
-- Data for Name: rr_alerts; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.rr_alerts VALUES (1, 'registry_reconcile', 'run1', 'failed', 'subject', NULL, '2026-11-28 07:00:00+00');


--
-- Data for Name: rr_copied_bytes; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.rr_copied_bytes VALUES (1, 'registry_reconcile', 'run1', 'copy_blobs', 0, 12345, '2026-11-28 07:00:00+00');


--
-- Data for Name: rr_dag_outcomes; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.rr_dag_outcomes VALUES (1, 'registry_reconcile', 'run1', 'failed', '2026-11-28 07:00:00+00');


--
-- Data for Name: rr_events; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.rr_events VALUES ('e2', '2026-11-28 07:00:00+00', '2026-11-28 06:00:02+00', 'push', 'group/app', '1.2', 'sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 'm', 'pending', 0, '2026-11-28 07:00:00+00', NULL, NULL, NULL, '2026-11-28 07:00:00+00');
INSERT INTO public.rr_events VALUES ('e3', '2026-11-28 07:00:00+00', '2026-11-28 06:00:03+00', 'push', 'group/app', '1.3', 'sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 'm', 'pending', 0, '2026-11-28 07:00:00+00', NULL, NULL, NULL, '2026-11-28 07:00:00+00');
INSERT INTO public.rr_events VALUES ('e4', '2026-11-28 07:00:00+00', '2026-11-28 06:00:04+00', 'push', 'group/app', '1.4', 'sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 'm', 'pending', 0, '2026-11-28 07:00:00+00', NULL, NULL, NULL, '2026-11-28 07:00:00+00');
INSERT INTO public.rr_events VALUES ('e0', '2026-11-28 07:00:00+00', '2026-11-28 06:00:00+00', 'push', 'group/app', '1.0', 'sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 'm', 'done', 1, '2026-11-28 07:00:00+00', NULL, NULL, NULL, '2026-11-28 07:00:00+00');
INSERT INTO public.rr_events VALUES ('e1', '2026-11-28 07:00:00+00', '2026-11-28 06:00:01+00', 'push', 'group/app', '1.1', 'sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 'm', 'done', 1, '2026-11-28 07:00:00+00', NULL, NULL, NULL, '2026-11-28 07:00:00+00');


--
-- Data for Name: rr_failed_layers; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.rr_failed_layers VALUES (1, 'registry_reconcile', 'run1', 'copy_blobs', 0, 'group/app', 'sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', 10, 500, 'UNKNOWN', 'boom', '2026-11-28 07:00:00+00');


--
-- Data for Name: rr_leases; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.rr_leases VALUES ('repository:group/app', 'old-writer', '2026-11-28 07:10:00+00', '2026-11-28 07:00:00+00', 'null');


--
-- Data for Name: rr_push_latency; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.rr_push_latency VALUES ('e0', 'group/app', '2026-11-28 06:00:00+00', '2026-11-28 07:00:00+00', 3600);
INSERT INTO public.rr_push_latency VALUES ('e1', 'group/app', '2026-11-28 06:00:01+00', '2026-11-28 07:00:00+00', 3599);


--
-- Data for Name: rr_repository_state; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.rr_repository_state VALUES ('group/app', 'failed', NULL, NULL, NULL, NULL, NULL, 'boom', '2026-11-28 07:00:00+00');


--
-- Data for Name: rr_runs; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.rr_runs VALUES ('run1', 'registry_reconcile', 'failed', '{"copied": 3}', '2026-11-28 07:00:00+00');


--
-- Data for Name: rr_schema; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.rr_schema VALUES (1);


--
-- Name: rr_alerts_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.rr_alerts_id_seq', 1, true);


--
-- Name: rr_copied_bytes_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.rr_copied_bytes_id_seq', 1, true);


--
-- Name: rr_dag_outcomes_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.rr_dag_outcomes_id_seq', 1, true);


--
-- Name: rr_failed_layers_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.rr_failed_layers_id_seq', 1, true);


--
-- Name: rr_schema_version_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.rr_schema_version_seq', 1, false);


--
-- Name: rr_alerts rr_alerts_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.rr_alerts
    ADD CONSTRAINT rr_alerts_pkey PRIMARY KEY (id);


--
-- Name: rr_copied_bytes rr_copied_bytes_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.rr_copied_bytes
    ADD CONSTRAINT rr_copied_bytes_pkey PRIMARY KEY (id);


--
-- Name: rr_dag_outcomes rr_dag_outcomes_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.rr_dag_outcomes
    ADD CONSTRAINT rr_dag_outcomes_pkey PRIMARY KEY (id);


--
-- Name: rr_events rr_events_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.rr_events
    ADD CONSTRAINT rr_events_pkey PRIMARY KEY (id);


--
-- Name: rr_failed_layers rr_failed_layers_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.rr_failed_layers
    ADD CONSTRAINT rr_failed_layers_pkey PRIMARY KEY (id);


--
-- Name: rr_leases rr_leases_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.rr_leases
    ADD CONSTRAINT rr_leases_pkey PRIMARY KEY (resource);


--
-- Name: rr_push_latency rr_push_latency_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.rr_push_latency
    ADD CONSTRAINT rr_push_latency_pkey PRIMARY KEY (event_id);


--
-- Name: rr_repository_state rr_repository_state_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.rr_repository_state
    ADD CONSTRAINT rr_repository_state_pkey PRIMARY KEY (repository);


--
-- Name: rr_runs rr_runs_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.rr_runs
    ADD CONSTRAINT rr_runs_pkey PRIMARY KEY (run_id, dag_id);


--
-- Name: rr_schema rr_schema_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.rr_schema
    ADD CONSTRAINT rr_schema_pkey PRIMARY KEY (version);


--
-- Name: ix_rr_dag_outcomes_dag; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_rr_dag_outcomes_dag ON public.rr_dag_outcomes USING btree (dag_id, id);


--
-- Name: ix_rr_events_status_next; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_rr_events_status_next ON public.rr_events USING btree (status, next_attempt_at);


--
-- Name: ix_rr_push_latency_ack; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_rr_push_latency_ack ON public.rr_push_latency USING btree (acknowledged_at);


--
-- PostgreSQL database dump complete
--


