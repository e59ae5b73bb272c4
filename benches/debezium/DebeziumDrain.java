/*
 * The Debezium side of Sluice's capture benchmarks (benches/capture.rs, benches/capture_mysql.rs).
 *
 * Runs Debezium's embedded engine (io.debezium.engine.DebeziumEngine, JSON format, schemas off)
 * over a backlog that is already in the WAL or binlog, counts change records of one table until
 * it has seen N, then prints one line and exits 0:
 *
 *   DRAINED rows=N other=K jvm_start_ms=.. main_ms=.. first_ms=.. last_ms=.. cpu_first_ms=..
 *           cpu_ms=.. vmhwm_kb=..
 *
 * (one line; times are System.currentTimeMillis(); cpu_* is this process's CPU time, user +
 * system, from com.sun.management.OperatingSystemMXBean#getProcessCpuTime, read when the first
 * and the N-th counted record arrived; vmhwm_kb is VmHWM from /proc/self/status read then.)
 * "other" counts records that were not counted: heartbeats, schema changes, tombstones, other
 * tables. On a failure of the engine it prints "FAILED <reason>" and exits 2; when no counted
 * record came for drain.idle.timeout.s it prints "TIMEOUT rows=<seen>" and exits 3.
 *
 * Usage: java -Xmx1g -cp <classes>:<libs>/* DebeziumDrain <file.properties>
 *
 * The properties file holds the engine's own configuration (connector.class, database.*, ...)
 * plus these, which the drain takes out before handing the rest to the engine:
 *   drain.rows            N, the number of change records to wait for
 *   drain.topic           the destination (topic) of the counted table, e.g. dbz.public.bench
 *   drain.idle.timeout.s  give up after this long without a counted record (default 120)
 *   drain.seed.partition.<k>, drain.seed.offset.<k>
 *                         an offset to start from (see "Where reading starts" below)
 *
 * Logging: slf4j-simple at WARN on stderr, unless -Dorg.slf4j.simpleLogger.defaultLogLevel
 * says otherwise (the benchmark sends stderr to a file; BENCH_DEBEZIUM_LOG=info sets it), and
 * java.util.logging (the binlog client's) at the same level.
 *
 * Where reading starts (the same bytes Sluice reads, decoded after the workload was written):
 *
 * - Postgres: a logical slot created with pg_create_logical_replication_slot('dbz', 'pgoutput')
 *   before the workload, next to pg_recvlogical's slots, holds the WAL. The connector runs with
 *   plugin.name=pgoutput, slot.name=dbz, the existing publication (publication.autocreate.mode=
 *   disabled) and snapshot.mode=no_data; with no stored offset it streams from the slot's
 *   confirmed position, i.e. from before the workload. Offsets are kept in memory
 *   (offset.storage=org.apache.kafka.connect.storage.MemoryOffsetBackingStore: that class is
 *   abstract in Kafka 4.3, but the engine replaces that exact name with its own in-memory store).
 *
 * - MySQL/MariaDB: a binlog has no slot, and Debezium has no setting for a start position (its
 *   set-binlog-position signal needs a running connector, a committed offset and a restart).
 *   So the benchmark records SHOW MASTER STATUS (file, position) before the workload, and this
 *   program hands the connector that position as its stored offset: offset.storage is
 *   DebeziumDrain$SeededOffsets, Kafka Connect's in-memory store holding one entry written
 *   exactly as the engine's own offset writer would (its JSON converter, key
 *   [engine name, {"server": topic.prefix}], value {"file": .., "pos": ..}). With an offset but
 *   an empty in-memory schema history (io.debezium.relational.history.MemorySchemaHistory),
 *   snapshot.mode=recovery is the mode that rebuilds the history from the tables' current
 *   definitions (no data) and then streams from the stored offset. The workload changes no
 *   schema, so the tables' definitions now are the ones the binlog events were written under.
 *   The alternative, starting Debezium before the workload and waiting until it streams, would
 *   have it read while the workload writes (limited by the writer, not by the reader) instead
 *   of draining a backlog as Sluice and pg_recvlogical do.
 *
 * What is not measured: the embedded engine hands records to this program, which counts them;
 * nothing goes to Kafka. Sluice's figures include producing to Kafka and waiting for the
 * broker's acknowledgements, so this side does less work per record.
 */

import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.lang.management.ManagementFactory;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;

import io.debezium.engine.ChangeEvent;
import io.debezium.engine.DebeziumEngine;
import io.debezium.engine.format.Json;

public class DebeziumDrain {

    /** Kafka Connect's in-memory offset store, seeded with one offset before the engine reads. */
    public static class SeededOffsets extends org.apache.kafka.connect.storage.MemoryOffsetBackingStore {
        static volatile byte[] seedKey;
        static volatile byte[] seedValue;

        public SeededOffsets() {
        }

        @Override
        public void configure(org.apache.kafka.connect.runtime.WorkerConfig config) {
            super.configure(config);
            if (seedKey != null) {
                data.put(ByteBuffer.wrap(seedKey), ByteBuffer.wrap(seedValue));
            }
        }

        @Override
        public Set<Map<String, Object>> connectorPartitions(String connectorName) {
            return Collections.emptySet();
        }

        /** Serializes the offset as the engine's offset writer does (JSON, schemas off). */
        static void seed(String namespace, Map<String, Object> partition, Map<String, Object> offset) {
            org.apache.kafka.connect.json.JsonConverter keys = new org.apache.kafka.connect.json.JsonConverter();
            keys.configure(Collections.singletonMap("schemas.enable", "false"), true);
            org.apache.kafka.connect.json.JsonConverter values = new org.apache.kafka.connect.json.JsonConverter();
            values.configure(Collections.singletonMap("schemas.enable", "false"), false);
            seedKey = keys.fromConnectData(namespace, null, Arrays.asList(namespace, partition));
            seedValue = values.fromConnectData(namespace, null, offset);
        }
    }

    private static final Object LOCK = new Object();
    private static long counted;
    private static long other;
    private static long firstMs;
    private static long cpuFirstNs;
    private static long lastCountedAt = System.currentTimeMillis();
    private static String drainedLine;

    public static void main(String[] args) throws Exception {
        long mainMs = System.currentTimeMillis();
        // Before anything asks slf4j for a logger.
        setIfAbsent("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        setIfAbsent("org.slf4j.simpleLogger.logFile", "System.err");
        setIfAbsent("org.slf4j.simpleLogger.showDateTime", "true");
        setIfAbsent("org.slf4j.simpleLogger.dateTimeFormat", "HH:mm:ss.SSS");
        // The binlog client (com.github.shyiko.mysql.binlog) logs through java.util.logging.
        java.util.logging.Level julLevel;
        switch (System.getProperty("org.slf4j.simpleLogger.defaultLogLevel").toLowerCase()) {
            case "trace": julLevel = java.util.logging.Level.FINEST; break;
            case "debug": julLevel = java.util.logging.Level.FINE; break;
            case "info": julLevel = java.util.logging.Level.INFO; break;
            case "error": julLevel = java.util.logging.Level.SEVERE; break;
            default: julLevel = java.util.logging.Level.WARNING;
        }
        java.util.logging.Logger julRoot = java.util.logging.Logger.getLogger("");
        julRoot.setLevel(julLevel);
        for (java.util.logging.Handler h : julRoot.getHandlers()) {
            h.setLevel(julLevel);
        }

        if (args.length != 1) {
            System.out.println("FAILED usage: DebeziumDrain <file.properties>");
            System.exit(2);
        }
        Properties all = new Properties();
        try (InputStream in = new FileInputStream(args[0])) {
            all.load(in);
        }
        long rows = Long.parseLong(required(all, "drain.rows"));
        String topic = required(all, "drain.topic");
        long idleMs = 1000L * Long.parseLong(all.getProperty("drain.idle.timeout.s", "120"));

        Properties engineProps = new Properties();
        Map<String, Object> seedPartition = new LinkedHashMap<>();
        Map<String, Object> seedOffset = new LinkedHashMap<>();
        for (String k : all.stringPropertyNames()) {
            String v = all.getProperty(k);
            if (k.startsWith("drain.seed.partition.")) {
                seedPartition.put(k.substring("drain.seed.partition.".length()), v);
            } else if (k.startsWith("drain.seed.offset.")) {
                seedOffset.put(k.substring("drain.seed.offset.".length()), v.matches("-?\\d+") ? (Object) Long.valueOf(v) : v);
            } else if (!k.startsWith("drain.")) {
                engineProps.setProperty(k, v);
            }
        }
        if (!seedOffset.isEmpty()) {
            SeededOffsets.seed(required(engineProps, "name"), seedPartition, seedOffset);
            engineProps.setProperty("offset.storage", SeededOffsets.class.getName());
        }

        CountDownLatch finished = new CountDownLatch(1);
        AtomicReference<String> failure = new AtomicReference<>();
        com.sun.management.OperatingSystemMXBean os =
                (com.sun.management.OperatingSystemMXBean) ManagementFactory.getOperatingSystemMXBean();
        long jvmStartMs = ManagementFactory.getRuntimeMXBean().getStartTime();

        DebeziumEngine<ChangeEvent<String, String>> engine = DebeziumEngine.create(Json.class)
                .using(engineProps)
                .using((boolean success, String message, Throwable error) -> {
                    if (!success || error != null) {
                        String why = message != null ? message : "engine stopped";
                        if (error != null) {
                            Throwable root = error;
                            while (root.getCause() != null && root.getCause() != root) {
                                root = root.getCause();
                            }
                            if (root.getMessage() == null || !why.contains(root.getMessage())) {
                                why = why + ": " + root;
                            }
                        }
                        failure.compareAndSet(null, why.replace('\n', ' '));
                    } else {
                        failure.compareAndSet(null, "engine stopped before " + rows + " records: " + message);
                    }
                    finished.countDown();
                })
                .notifying((List<ChangeEvent<String, String>> records,
                        DebeziumEngine.RecordCommitter<ChangeEvent<String, String>> committer) -> {
                    for (ChangeEvent<String, String> r : records) {
                        boolean count = r.value() != null && topic.equals(r.destination());
                        synchronized (LOCK) {
                            if (count && drainedLine == null) {
                                counted++;
                                long now = System.currentTimeMillis();
                                lastCountedAt = now;
                                if (counted == 1) {
                                    firstMs = now;
                                    cpuFirstNs = os.getProcessCpuTime();
                                }
                                if (counted == rows) {
                                    long cpuNs = os.getProcessCpuTime();
                                    drainedLine = String.format(
                                            "DRAINED rows=%d other=%d jvm_start_ms=%d main_ms=%d first_ms=%d last_ms=%d"
                                                    + " cpu_first_ms=%.3f cpu_ms=%.3f vmhwm_kb=%d",
                                            counted, other, jvmStartMs, mainMs, firstMs, now,
                                            cpuFirstNs / 1e6, cpuNs / 1e6, vmHwmKb());
                                    finished.countDown();
                                }
                            } else if (!count) {
                                other++;
                            }
                        }
                        committer.markProcessed(r);
                    }
                    committer.markBatchFinished();
                })
                .build();

        ExecutorService executor = Executors.newSingleThreadExecutor(runnable -> {
            Thread t = new Thread(runnable, "debezium-engine");
            t.setDaemon(true);
            return t;
        });
        executor.execute(engine);

        int exit;
        while (true) {
            if (finished.await(1, TimeUnit.SECONDS)) {
                break;
            }
            synchronized (LOCK) {
                if (System.currentTimeMillis() - lastCountedAt > idleMs) {
                    break;
                }
            }
        }
        synchronized (LOCK) {
            if (drainedLine != null) {
                System.out.println(drainedLine);
                exit = 0;
            } else if (failure.get() != null) {
                System.out.println("FAILED " + failure.get());
                exit = 2;
            } else {
                System.out.println("TIMEOUT rows=" + counted + " other=" + other + " (no counted record for "
                        + idleMs / 1000 + " s)");
                exit = 3;
            }
        }
        System.out.flush();
        // Close the engine (its database connections) but do not wait long for it.
        Thread closer = new Thread(() -> {
            try {
                engine.close();
            } catch (IOException | RuntimeException e) {
                // exiting anyway
            }
        }, "debezium-close");
        closer.setDaemon(true);
        closer.start();
        closer.join(10_000);
        Runtime.getRuntime().halt(exit);
    }

    private static void setIfAbsent(String key, String value) {
        if (System.getProperty(key) == null) {
            System.setProperty(key, value);
        }
    }

    private static String required(Properties p, String key) {
        String v = p.getProperty(key);
        if (v == null || v.isEmpty()) {
            System.out.println("FAILED missing property " + key);
            System.out.flush();
            Runtime.getRuntime().halt(2);
        }
        return v;
    }

    /** Peak resident set size so far, from /proc/self/status (0 where there is none). */
    private static long vmHwmKb() {
        try {
            for (String line : Files.readAllLines(Paths.get("/proc/self/status"), StandardCharsets.UTF_8)) {
                if (line.startsWith("VmHWM:")) {
                    return Long.parseLong(line.replaceAll("[^0-9]", ""));
                }
            }
        } catch (IOException | NumberFormatException e) {
            // not Linux
        }
        return 0;
    }
}
