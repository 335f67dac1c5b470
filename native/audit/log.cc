#include "log.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>

namespace xks::audit {

namespace {

// batched: an inbox this large is written at once rather than after writeMs.
constexpr size_t kBigInbox = 1 << 20;
constexpr size_t kEntryHeader = 3 * sizeof(uint32_t);  // len, id, channel
// before-response: how far ahead of the last line the file is prepared, in one synced write
// (256 KiB: about 0.5 ms here, some 400 records), and below what the idle thread prepares more.
constexpr off_t kPrepareBytes = 256 * 1024;
constexpr off_t kPrepareLow = 192 * 1024;
constexpr size_t kZeroBlock = 64 * 1024;
const char kZeros[kZeroBlock] = {};

int64_t MonoUs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

std::chrono::steady_clock::time_point MonoTimePoint(int64_t us) {
  // steady_clock is CLOCK_MONOTONIC in libstdc++.
  return std::chrono::steady_clock::time_point(std::chrono::microseconds(us));
}

const char* ErrnoName(int e) {
  switch (e) {
    case ENOSPC:
      return "ENOSPC";
    case EDQUOT:
      return "EDQUOT";
    case EFBIG:
      return "EFBIG";
    case EIO:
      return "EIO";
    case EACCES:
      return "EACCES";
    case EPERM:
      return "EPERM";
    case EROFS:
      return "EROFS";
    case EBADF:
      return "EBADF";
    default:
      return "EIO";
  }
}

void Hex(const uint8_t* in, size_t n, char* out) {
  static const char kDigits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = kDigits[in[i] >> 4];
    out[2 * i + 1] = kDigits[in[i] & 15];
  }
}

// One-shot SHA-256 with a context kept by the writer thread (node's OpenSSL).
class Sha256 {
 public:
  Sha256() : md_(EVP_MD_fetch(nullptr, "SHA256", nullptr)), ctx_(EVP_MD_CTX_new()) {}
  ~Sha256() {
    EVP_MD_CTX_free(ctx_);
    EVP_MD_free(md_);
  }
  bool digest(const char* data, size_t len, uint8_t out[32]) {
    unsigned int n = 0;
    return md_ != nullptr && ctx_ != nullptr && EVP_DigestInit_ex(ctx_, md_, nullptr) == 1 &&
           EVP_DigestUpdate(ctx_, data, len) == 1 && EVP_DigestFinal_ex(ctx_, out, &n) == 1 && n == 32;
  }

 private:
  EVP_MD* md_;
  EVP_MD_CTX* ctx_;
};

thread_local Sha256* tSha = nullptr;

}  // namespace

Log::Log(Options o, std::function<void()> notifyControl)
    : o_(std::move(o)), clockOffsetUs_(o_.controlNowUs - MonoUs()), notify_(std::move(notifyControl)) {
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "xks-audit");
    Sha256 sha;
    tSha = &sha;
    run();
    tSha = nullptr;
  });
}

Log::~Log() { stop(); }

// ------------------------------------------------------------------ any thread

bool Log::record(uint32_t channel, uint32_t id, const char* fields, size_t len) {
  if (refusing_.load(std::memory_order_acquire)) return false;
  bool wasEmpty;
  size_t size;
  {
    std::lock_guard<std::mutex> l(inboxMu_);
    wasEmpty = inbox_.empty();
    const uint32_t h[3] = {static_cast<uint32_t>(len), id, channel};
    inbox_.append(reinterpret_cast<const char*>(h), sizeof h);
    inbox_.append(fields, len);
    if (wasEmpty) inboxSinceUs_ = MonoUs();
    size = inbox_.size();
  }
  // batched: the first record of a batch wakes the thread (to time the batch); before-response
  // records wait for kick(), once per turn of their event loop.
  if (!o_.durable && (wasEmpty || size >= kBigInbox)) kick();
  return true;
}

void Log::kick() {
  // One wake per sleep, by the caller that finds the thread asleep (a futex wake of a thread on
  // another CPU is costly, above all in a VM).
  if (sleeping_.load(std::memory_order_acquire) && sleeping_.exchange(false, std::memory_order_acq_rel)) {
    { std::lock_guard<std::mutex> l(mu_); }  // the thread waits now, or has yet to look at the inbox
    cv_.notify_one();
  }
}

bool Log::broken() const { return brokenFlag_.load(std::memory_order_relaxed); }

uint32_t Log::attach(Channel* c) {
  std::lock_guard<std::mutex> l(chanMu_);
  for (size_t i = 0; i < channels_.size(); i++) {
    if (channels_[i] == nullptr) {
      channels_[i] = c;
      return static_cast<uint32_t>(i);
    }
  }
  channels_.push_back(c);
  return static_cast<uint32_t>(channels_.size() - 1);
}

void Log::detach(uint32_t channel) {
  std::lock_guard<std::mutex> l(chanMu_);
  if (channel < channels_.size()) channels_[channel] = nullptr;
}

// ------------------------------------------------------------------ the control

void Log::useFile(uint32_t epoch, int fd, uint64_t seq, const Head& head, int64_t periodEndsUs) {
  {
    std::lock_guard<std::mutex> l(mu_);
    epoch_ = epoch;
    haveFile_ = true;
    newFd_ = fd;
    newSeq_ = seq;
    newHead_ = head;
    newPeriodEnds_ = periodEndsUs;
    brokenFlag_ = false;
    if (!stop_) refusing_.store(false, std::memory_order_release);
  }
  cv_.notify_one();
}

void Log::resume(uint32_t epoch, std::string line) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (epoch != epoch_) return;
    haveResume_ = true;
    resumeLine_ = std::move(line);
  }
  cv_.notify_one();
}

void Log::finish(uint32_t epoch, std::string line) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (epoch != epoch_) return;
    haveFinish_ = true;
    finishLine_ = std::move(line);
  }
  cv_.notify_one();
}

void Log::requestEnd() {
  {
    std::lock_guard<std::mutex> l(mu_);
    endRequested_ = true;
  }
  cv_.notify_one();
}

void Log::markBroken() {
  {
    std::lock_guard<std::mutex> l(mu_);
    brokenRequested_ = true;
    brokenFlag_ = true;
  }
  cv_.notify_one();
}

std::vector<Event> Log::takeEvents() {
  std::lock_guard<std::mutex> l(mu_);
  std::vector<Event> e;
  e.swap(events_);
  return e;
}

void Log::stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stop_) return;
    stop_ = true;
    refusing_.store(true, std::memory_order_release);
  }
  cv_.notify_one();
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

// ------------------------------------------------------------------ the writer thread

void Log::run() {
  std::unique_lock<std::mutex> l(mu_);
  for (;;) {
    if (stop_) break;
    if (brokenRequested_) {
      brokenRequested_ = false;
      if (state_ != State::kBroken) {
        l.unlock();
        fail(0);
        l.lock();
      }
      continue;
    }
    if (haveFile_) {
      haveFile_ = false;
      fd_ = newFd_;
      seq_ = newSeq_;
      head_ = newHead_;
      periodEnds_ = newPeriodEnds_;
      sinceCheckpoint_ = 0;
      endsInCheckpoint_ = false;
      unsynced_ = false;
      if (o_.durable) {
        // Lines go at dataEnd_ and zeros after them: an O_APPEND file would put both at its end.
        const int flags = fcntl(fd_, F_GETFL);
        if (flags >= 0 && (flags & O_APPEND) != 0) fcntl(fd_, F_SETFL, flags & ~O_APPEND);
        struct stat st;
        dataEnd_ = fstat(fd_, &st) == 0 ? st.st_size : 0;
        preparedEnd_ = dataEnd_;
        prepareAgainUs_ = 0;
      }
      state_ = State::kRunning;
    }
    if (haveResume_) {
      haveResume_ = false;
      std::string line;
      line.swap(resumeLine_);
      if (state_ == State::kAwaitCheckpoint) {
        state_ = State::kRunning;
        sinceCheckpoint_ = 0;
        if (!line.empty()) {
          l.unlock();
          appendLine(line.data(), line.size(), 0, 0);
          endsInCheckpoint_ = true;
          l.lock();
        }
      }
    }
    if (haveFinish_) {
      haveFinish_ = false;
      std::string line;
      line.swap(finishLine_);
      if (state_ == State::kAwaitFinish) {
        l.unlock();
        if (!line.empty()) appendLine(line.data(), line.size(), 0, 0);
        bool ok = writeOut();
        if (ok) complete(true);
        trim();
        if (ok && fdatasync(fd_) != 0) ok = false;
        const int err = errno;
        if (!ok) {
          fail(err);
        } else {
          close(fd_);
          fd_ = -1;
          unsynced_ = false;
          Event e(Event::kEnded);
          char hex[64];
          Hex(head_.data(), head_.size(), hex);
          e.head.assign(hex, sizeof hex);
          l.lock();
          state_ = State::kNoFile;
          e.epoch = epoch_;
          l.unlock();
          emit(std::move(e));
        }
        l.lock();
        continue;
      }
    }

    const int64_t now = MonoUs();
    // Set before the inbox is looked at: a record queued after that look wakes the thread.
    sleeping_.store(state_ == State::kRunning, std::memory_order_release);
    bool inboxEmpty;
    int64_t inboxSince;
    {
      std::lock_guard<std::mutex> g(inboxMu_);
      inboxEmpty = inbox_.empty();
      inboxSince = inboxSinceUs_;
      if (state_ == State::kRunning && !inboxEmpty &&
          (o_.durable || endRequested_ || now >= inboxSince + o_.writeMs * 1000 || inbox_.size() >= kBigInbox)) {
        taken_.swap(inbox_);
        inboxEmpty = true;
      }
    }
    if (!taken_.empty()) {
      sleeping_.store(false, std::memory_order_relaxed);
      if (workPos_ >= work_.size()) {
        work_.swap(taken_);
        workPos_ = 0;
      } else {
        work_.append(taken_);
      }
      taken_.clear();
    }
    if (state_ == State::kRunning) {
      const bool checkpointDue = sinceCheckpoint_ > 0 && now >= firstSinceCheckpointUs_ + o_.checkpointSecs * 1000000;
      const bool work = workPos_ < work_.size();
      const bool endNow = endRequested_ && !work && inboxEmpty;
      if (work || checkpointDue || endNow || !out_.empty()) {
        sleeping_.store(false, std::memory_order_relaxed);
        if (endNow) endRequested_ = false;
        l.unlock();
        step(now, checkpointDue, endNow);
        l.lock();
        continue;
      }
    }
    if (unsynced_ && fd_ >= 0 && now >= writtenAtUs_ + o_.syncMs * 1000) {
      sleeping_.store(false, std::memory_order_relaxed);
      unsynced_ = false;
      l.unlock();
      if (fdatasync(fd_) != 0) fail(errno);
      l.lock();
      continue;
    }

    if (o_.durable && state_ == State::kRunning && inboxEmpty && fd_ >= 0 && preparedEnd_ - dataEnd_ < kPrepareLow &&
        now >= prepareAgainUs_) {
      // Idle: prepare the file's next blocks now rather than while a group waits.
      sleeping_.store(false, std::memory_order_relaxed);
      l.unlock();
      if (!prepare(kPrepareBytes - kPrepareLow)) prepareAgainUs_ = MonoUs() + 1000000;
      l.lock();
      continue;
    }
    int64_t deadline = INT64_MAX;
    if (state_ == State::kRunning) {
      if (!inboxEmpty) deadline = std::min(deadline, inboxSince + o_.writeMs * 1000);
      if (sinceCheckpoint_ > 0) deadline = std::min(deadline, firstSinceCheckpointUs_ + o_.checkpointSecs * 1000000);
    }
    if (unsynced_) deadline = std::min(deadline, writtenAtUs_ + o_.syncMs * 1000);
    if (deadline == INT64_MAX) {
      cv_.wait(l);
    } else {
      cv_.wait_until(l, MonoTimePoint(deadline));
    }
    sleeping_.store(false, std::memory_order_relaxed);
  }
  // Stopped: whatever still waits is lost (the control ended the file before, on a clean stop).
  l.unlock();
  std::string queued;
  {
    std::lock_guard<std::mutex> g(inboxMu_);
    queued.swap(inbox_);
  }
  complete(false);
  failEntries(work_, workPos_);
  failEntries(queued, 0);
  if (fd_ >= 0) {
    trim();
    if (unsynced_ || o_.durable) fdatasync(fd_);
    close(fd_);
    fd_ = -1;
  }
}

void Log::step(int64_t now, bool checkpointDue, bool endNow) {
  const int64_t wall = now + clockOffsetUs_;
  bool paused = false;
  if (checkpointDue) {
    pause(State::kAwaitCheckpoint, Event::kCheckpoint, wall);
    paused = true;
  }
  while (!paused && workPos_ < work_.size()) {
    if (wall >= periodEnds_) {
      pause(State::kAwaitFinish, Event::kEnd, wall);
      paused = true;
      break;
    }
    uint32_t h[3];
    std::memcpy(h, work_.data() + workPos_, sizeof h);
    const char* fields = work_.data() + workPos_ + kEntryHeader;
    workPos_ += kEntryHeader + h[0];
    appendUse(fields, h[0], h[2], h[1], wall);
    if (++sinceCheckpoint_ == 1) firstSinceCheckpointUs_ = now;
    if (sinceCheckpoint_ >= o_.checkpointEvery) {
      pause(State::kAwaitCheckpoint, Event::kCheckpoint, wall);
      paused = true;
    }
  }
  if (workPos_ >= work_.size()) {
    work_.clear();
    workPos_ = 0;
  }
  if (!out_.empty()) {
    if (!writeOut()) {
      fail(errno);
      return;
    }
    complete(true);
    if (!o_.durable && !unsynced_) {
      unsynced_ = true;
      writtenAtUs_ = now;
    }
  }
  if (endNow && !paused) pause(State::kAwaitFinish, Event::kEnd, wall);
}

void Log::pause(State s, Event::Kind kind, int64_t wallUs) {
  Event e(kind);
  e.seq = seq_;
  e.time = timeText(wallUs);
  char hex[64];
  Hex(head_.data(), head_.size(), hex);
  e.head.assign(hex, sizeof hex);
  e.needsCheckpoint = !endsInCheckpoint_;
  {
    std::lock_guard<std::mutex> l(mu_);
    state_ = s;
    e.epoch = epoch_;
  }
  emit(std::move(e));
}

void Log::appendUse(const char* fields, size_t len, uint32_t channel, uint32_t id, int64_t wallUs) {
  const size_t start = out_.size();
  char num[24];
  const auto r = std::to_chars(num, num + sizeof num, seq_);
  out_.append("{\"v\":1,\"type\":\"use\",\"seq\":");
  out_.append(num, static_cast<size_t>(r.ptr - num));
  out_.append(",\"time\":\"");
  out_.append(timeText(wallUs));
  out_.append("\",\"instance\":\"");
  out_.append(o_.instance);
  out_.append("\",");
  out_.append(fields, len);
  out_.append(",\"prev\":\"");
  char hex[64];
  Hex(head_.data(), head_.size(), hex);
  out_.append(hex, sizeof hex);
  out_.append("\"}");
  chain(start, channel, id);
  endsInCheckpoint_ = false;
}

void Log::appendLine(const char* line, size_t len, uint32_t channel, uint32_t id) {
  const size_t start = out_.size();
  out_.append(line, len);
  chain(start, channel, id);
}

void Log::chain(size_t start, uint32_t channel, uint32_t id) {
  if (tSha == nullptr || !tSha->digest(out_.data() + start, out_.size() - start, head_.data())) {
    // No hash means no chain: nothing more can be written that would verify.
    out_.resize(start);
    hashFailed_ = true;
    return;
  }
  out_.push_back('\n');
  seq_++;
  if (id != 0) waiting_.emplace_back(channel, id);
}

bool Log::writeOut() {
  if (hashFailed_) {
    errno = EIO;
    return false;
  }
  // A group larger than the prepared blocks goes past them (as an append would): correct, slower.
  if (o_.durable && dataEnd_ + static_cast<off_t>(out_.size()) > preparedEnd_) prepare(4096);
  size_t off = 0;
  while (off < out_.size()) {
    const ssize_t n = o_.durable ? ::pwrite(fd_, out_.data() + off, out_.size() - off, dataEnd_)
                                 : ::write(fd_, out_.data() + off, out_.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (n == 0) {
      errno = EIO;
      return false;
    }
    off += static_cast<size_t>(n);
    if (o_.durable) {
      dataEnd_ += n;
      preparedEnd_ = std::max(preparedEnd_, dataEnd_);
    }
  }
  if (o_.copyOut) {
    Event e(Event::kText);
    e.text = out_;
    emit(std::move(e));
  }
  out_.clear();
  return true;
}

bool Log::prepare(off_t atLeast) {
  // Ahead of the last line: at most kPrepareBytes, and never more than a quarter of what would be
  // free without these zeros (a filling disk is not made full by them).
  const off_t ahead = preparedEnd_ - dataEnd_;
  off_t target = kPrepareBytes;
  struct statvfs v;
  if (fstatvfs(fd_, &v) == 0) target = std::min(target, (static_cast<off_t>(v.f_bavail * v.f_frsize) + ahead) / 4);
  off_t want = target - ahead;
  want -= want % 4096;
  if (want < atLeast) return false;
  iovec iov[kPrepareBytes / kZeroBlock];
  int count = 0;
  for (off_t left = want; left > 0; left -= kZeroBlock) {
    iov[count].iov_base = const_cast<char*>(kZeros);
    iov[count].iov_len = static_cast<size_t>(std::min<off_t>(left, kZeroBlock));
    count++;
  }
  // O_DSYNC: once this returns, the zeros and the file's new size are on disk.
  ssize_t n;
  do {
    n = pwritev(fd_, iov, count, preparedEnd_);
  } while (n < 0 && errno == EINTR);
  if (n <= 0) return false;
  preparedEnd_ += n;
  return true;
}

void Log::trim() {
  if (!o_.durable || fd_ < 0 || preparedEnd_ <= dataEnd_) return;
  if (ftruncate(fd_, dataEnd_) == 0) preparedEnd_ = dataEnd_;
}

void Log::complete(bool ok) {
  if (waiting_.empty()) return;
  for (const auto& w : waiting_) {
    if (w.first >= byChannel_.size()) byChannel_.resize(w.first + 1);
    byChannel_[w.first].push_back(w.second);
  }
  waiting_.clear();
  std::lock_guard<std::mutex> l(chanMu_);
  for (size_t c = 0; c < byChannel_.size(); c++) {
    if (byChannel_[c].empty()) continue;
    if (c < channels_.size() && channels_[c] != nullptr) channels_[c]->written(byChannel_[c], ok);
    byChannel_[c].clear();
  }
}

void Log::failEntries(const std::string& entries, size_t pos) {
  while (pos + kEntryHeader <= entries.size()) {
    uint32_t h[3];
    std::memcpy(h, entries.data() + pos, sizeof h);
    pos += kEntryHeader + h[0];
    if (h[1] != 0) waiting_.emplace_back(h[2], h[1]);
  }
  complete(false);
}

void Log::fail(int err) {
  if (fd_ >= 0) {
    trim();
    close(fd_);
    fd_ = -1;
  }
  unsynced_ = false;
  hashFailed_ = false;
  out_.clear();
  complete(false);
  std::string queued;
  uint32_t epoch;
  {
    std::lock_guard<std::mutex> l(mu_);
    state_ = State::kBroken;
    brokenFlag_ = true;
    refusing_.store(true, std::memory_order_release);
    epoch = epoch_;
  }
  {
    std::lock_guard<std::mutex> g(inboxMu_);
    queued.swap(inbox_);
  }
  failEntries(work_, workPos_);
  work_.clear();
  workPos_ = 0;
  failEntries(queued, 0);
  if (err != 0) {
    Event e(Event::kFailed);
    e.epoch = epoch;
    e.text = ErrnoName(err);
    emit(std::move(e));
  }
}

void Log::emit(Event e) {
  {
    std::lock_guard<std::mutex> l(mu_);
    events_.push_back(std::move(e));
  }
  notify_();
}

const std::string& Log::timeText(int64_t wallUs) {
  const int64_t second = wallUs / 1000000;
  int micros = static_cast<int>(wallUs - second * 1000000);
  if (second != cachedSecond_) {
    const time_t t = static_cast<time_t>(second);
    tm g;
    gmtime_r(&t, &g);
    char b[32];
    const int n = std::snprintf(b, sizeof b, "%04d-%02d-%02dT%02d:%02d:%02d.", g.tm_year + 1900, g.tm_mon + 1,
                                g.tm_mday, g.tm_hour, g.tm_min, g.tm_sec);
    secondText_.assign(b, static_cast<size_t>(n));
    cachedSecond_ = second;
  }
  char us[7];  // "%06dZ" without a printf per record
  for (int i = 5; i >= 0; i--, micros /= 10) us[i] = static_cast<char>('0' + micros % 10);
  us[6] = 'Z';
  timeText_.assign(secondText_);
  timeText_.append(us, sizeof us);
  return timeText_;
}

}  // namespace xks::audit
