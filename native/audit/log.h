// The audit trail's writer thread (format v1, docs/audit.md): every event loop hands it the
// fields of a use record (record(), a copy into a buffer under a short lock, never a wait); the
// thread frames each line (seq, time, instance, fields, prev), chains it with SHA-256, appends it
// to the open file and tells each record's channel when it is on disk. Group commit is natural:
// whatever arrived while a write was in flight goes into the next single write.
//
// The control (src/audit/writer.ts, on the main thread) owns the files and the HSM: it opens each
// file and writes its start record, then useFile(); the thread asks it for a checkpoint's HMAC
// (Event::kCheckpoint, answered with resume()) and for the end of a file (Event::kEnd at the
// period's end or after requestEnd(), answered with finish()). A failed write or sync makes the
// log broken: records are refused until the next useFile().
//
// before-response writes each group with one O_DSYNC pwrite into blocks the thread has already
// written with zeros and synced ("prepared"): an append must also write the file's new size, which
// on a virtio disk costs a second write (bench/disksync.c: about half the time and CPU go). The
// zeros after the last line are cut off at the file's end and at a clean stop; after a crash
// readers skip them and the next start-up cuts them (docs/audit.md).
#pragma once

#include <sys/types.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace xks::audit {

struct Options {
  // before-response: the file is O_DSYNC and every group is written at once; records wait for it.
  bool durable = true;
  // batched: records wait up to writeMs for their write, and a written file is synced after syncMs.
  int64_t writeMs = 10;
  int64_t syncMs = 100;
  uint32_t checkpointEvery = 1000;
  int64_t checkpointSecs = 60;
  std::string instance;
  // stdout = true: every written text is also handed to the control (Event::kText).
  bool copyOut = false;
  // The control's clock now (wall microseconds): the thread's time stamps follow it.
  int64_t controlNowUs = 0;
};

struct Event {
  enum Kind { kCheckpoint, kEnd, kEnded, kFailed, kText };
  explicit Event(Kind k) : kind(k) {}
  Kind kind;
  uint32_t epoch = 0;
  uint64_t seq = 0;              // kCheckpoint, kEnd: the seq the next line takes
  std::string time;              // kCheckpoint, kEnd: its time stamp
  std::string head;              // kCheckpoint, kEnd, kEnded: the chain's head (hex)
  bool needsCheckpoint = false;  // kEnd: the file's last line is not a checkpoint
  std::string text;              // kFailed: the errno code; kText: the written lines
};

// Where the writer thread reports the records of one channel (an event loop) as written or lost.
class Channel {
 public:
  virtual ~Channel() = default;
  virtual void written(const std::vector<uint32_t>& ids, bool ok) = 0;
};

class Log {
 public:
  using Head = std::array<uint8_t, 32>;

  Log(Options o, std::function<void()> notifyControl);
  ~Log();
  Log(const Log&) = delete;
  Log& operator=(const Log&) = delete;

  // ------------------------------------------------------------ any thread
  // Queues a record's fields (a JSON fragment); id 0: nobody waits for it. false: refused (broken,
  // stopped), the caller answers as for a lost record.
  bool record(uint32_t channel, uint32_t id, const char* fields, size_t len);
  // before-response: the records queued since the last kick() are to be written now (called once
  // per turn of an event loop that queued some, so that a turn's records cost one wake).
  void kick();
  bool broken() const;
  uint32_t attach(Channel* c);
  void detach(uint32_t channel);

  // ------------------------------------------------------------ the control (main thread)
  // Continues the chain in a new file: fd (opened by the control, now owned here), the next seq,
  // the hash of its start record, the instant its period ends (wall microseconds).
  void useFile(uint32_t epoch, int fd, uint64_t seq, const Head& head, int64_t periodEndsUs);
  // Answers kCheckpoint: the checkpoint line (empty: skipped) is appended, the chain goes on.
  void resume(uint32_t epoch, std::string line);
  // Answers kEnd: `line` (a checkpoint, or empty) is appended, everything written and synced, the
  // file closed; then kEnded (or kFailed).
  void finish(uint32_t epoch, std::string line);
  // Ends the file once every queued record is in it (a clean stop): kEnd follows.
  void requestEnd();
  // The control could not continue the chain (no new file): queued records are lost, new ones refused.
  void markBroken();
  std::vector<Event> takeEvents();
  // Stops the thread (queued records are lost: the control ends the file before).
  void stop();

 private:
  enum class State { kNoFile, kRunning, kAwaitCheckpoint, kAwaitFinish, kBroken };

  void run();
  // Writer-thread steps (called without mu_ held).
  // Chains what work_ holds until a pause (checkpoint, the period's end), writes it, completes it.
  void step(int64_t nowUs, bool checkpointDue, bool endNow);
  void pause(State s, Event::Kind kind, int64_t wallUs);
  void appendUse(const char* fields, size_t len, uint32_t channel, uint32_t id, int64_t wallUs);
  void appendLine(const char* line, size_t len, uint32_t channel, uint32_t id);
  void chain(size_t start, uint32_t channel, uint32_t id);
  bool writeOut();
  // before-response: writes zeros from preparedEnd_ on (up to kPrepareBytes ahead of the last
  // line, at most a quarter of the free space) and syncs them; false when fewer than atLeast
  // bytes would be prepared, or the write failed.
  bool prepare(off_t atLeast);
  // before-response: the zeros after the last line go (a clean end, a failure, a stop).
  void trim();
  void complete(bool ok);
  void failEntries(const std::string& entries, size_t pos);
  // The file is given up (err 0: the control said so): everything waiting is lost, records refused.
  void fail(int err);
  void emit(Event e);
  const std::string& timeText(int64_t wallUs);

  const Options o_;
  const int64_t clockOffsetUs_;  // wall microseconds = CLOCK_MONOTONIC microseconds + this
  const std::function<void()> notify_;

  // ---- shared, under mu_
  mutable std::mutex mu_;
  std::condition_variable cv_;
  // ---- the inbox, under inboxMu_ only: record() takes no other lock (but to wake the thread)
  std::mutex inboxMu_;
  std::string inbox_;  // entries: u32 len, u32 id, u32 channel, bytes
  int64_t inboxSinceUs_ = 0;
  std::atomic<bool> refusing_{false};  // broken or stopped: record() refuses
  std::atomic<bool> sleeping_{false};  // the thread waits for records: the next one wakes it
  bool stop_ = false;
  bool endRequested_ = false;
  State state_ = State::kNoFile;
  uint32_t epoch_ = 0;
  // commands of the control
  bool haveFile_ = false;
  int newFd_ = -1;
  uint64_t newSeq_ = 0;
  Head newHead_{};
  int64_t newPeriodEnds_ = 0;
  bool haveResume_ = false;
  std::string resumeLine_;
  bool haveFinish_ = false;
  std::string finishLine_;
  bool brokenRequested_ = false;
  std::vector<Event> events_;
  std::vector<Channel*> channels_;       // index = channel id; nullptr: detached
  mutable std::mutex chanMu_;            // channels_ (held while calling them)
  std::atomic<bool> brokenFlag_{false};  // what broken() answers, read on every request

  // ---- writer thread only
  int fd_ = -1;
  uint64_t seq_ = 0;
  Head head_{};
  int64_t periodEnds_ = 0;
  uint32_t sinceCheckpoint_ = 0;
  int64_t firstSinceCheckpointUs_ = 0;
  bool endsInCheckpoint_ = false;
  bool unsynced_ = false;
  int64_t writtenAtUs_ = 0;
  off_t dataEnd_ = 0;           // before-response: where the next line goes (the file has no O_APPEND)
  off_t preparedEnd_ = 0;       // before-response: zeros written and synced up to here (>= dataEnd_)
  int64_t prepareAgainUs_ = 0;  // no idle prepare() before this (the last one wrote nothing)
  std::string taken_;           // the inbox the thread took last (an empty string kept for its capacity)
  std::string work_;            // entries taken from the inbox; those from workPos_ on are not chained yet
  size_t workPos_ = 0;
  bool hashFailed_ = false;
  std::string out_;                                     // lines chained, not yet written
  std::vector<std::pair<uint32_t, uint32_t>> waiting_;  // (channel, id) of the lines in out_
  std::vector<std::vector<uint32_t>> byChannel_;
  int64_t cachedSecond_ = -1;
  std::string secondText_;
  std::string timeText_;

  std::thread thread_;
};

}  // namespace xks::audit
