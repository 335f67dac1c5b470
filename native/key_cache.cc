// A label resolves to exactly one token secret key (none or several: not found). Its handle
// is cached until a call reports it invalid, or until the user may have been logged out;
// its attributes (type, length, usage flags) are read with the lookup, in the same
// C_GetAttributeValue, and cached with it: GetKeyMetadata is answered from them without a
// PKCS#11 call while they were confirmed less than checkMs ago. After that the next
// GetKeyMetadata looks the label up again and reads the attributes (the re-check below), and
// every re-lookup (a handle reported invalid, a re-initialization, a new login) reads them
// afresh. A change made in the HSM is therefore seen by GetKeyMetadata within checkMs.
//
// With key copies, encrypt and decrypt use a session-object copy of that key, made inside the
// HSM by C_CopyObject into session_ (the copy keeps every attribute of the token key but
// CKA_TOKEN, so it is as sensitive and unextractable as the original; no key material leaves
// the HSM). Some modules check a token object against their store on every use (SoftHSM2
// opens and reads the object's file twice per encrypt); a session object skips that. A
// module that refuses the copy (CKA_COPYABLE false, no C_CopyObject) is used through the
// token key as before. Because a copy outlives the deletion or change of its token key, the
// token key is looked up again at most checkMs after the last check, by the next call
// that uses it: the copy is kept only when the label still names that same object with the
// same attributes; otherwise it is destroyed and the label resolved afresh.
//
// Every method runs under the context lock (shared), with a logged-in pool session `s`.
#include "key_cache.h"

#include "ops.h"

namespace xks {

uint32_t KeyCache::copies() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  uint32_t n = 0;
  for (const auto& kv : keys_) n += kv.second.copied() ? 1 : 0;
  return n;
}

void KeyCache::closeSession() {
  // Bumped first: a copy made in the closing session is never cached afterwards.
  sessionGen_.fetch_add(1, std::memory_order_acq_rel);
  if (session_ != CK_INVALID_HANDLE && t_.f != nullptr) t_.f->C_CloseSession(session_);
  session_ = CK_INVALID_HANDLE;
  sessionCopies_ = 0;
  sessionOpen_.store(false, std::memory_order_release);
}

void KeyCache::destroyCopy(CK_OBJECT_HANDLE copy, uint64_t generation) {
  std::lock_guard<std::mutex> lk(sessionMu_);
  // From an earlier key session: closing that session destroyed it already.
  if (generation != sessionGen_.load(std::memory_order_acquire) || session_ == CK_INVALID_HANDLE) return;
  t_.f->C_DestroyObject(session_, copy);
  if (sessionCopies_ > 0) --sessionCopies_;
}

void KeyCache::drop(const std::string& label, CK_OBJECT_HANDLE handle) {
  CK_OBJECT_HANDLE copy = CK_INVALID_HANDLE;
  uint64_t generation = 0;
  {
    std::unique_lock<std::shared_mutex> lk(mu_);
    auto it = keys_.find(label);
    if (it == keys_.end()) return;
    // Only the entry the caller saw: another thread may have replaced it with a good one.
    if (handle != CK_INVALID_HANDLE && it->second.crypt != handle && it->second.token != handle) return;
    if (it->second.copied()) {
      copy = it->second.crypt;
      generation = it->second.generation;
    }
    keys_.erase(it);
  }
  // A call in flight on another thread may still use it; it then fails with a handle error
  // and retries through a fresh lookup.
  if (copy != CK_INVALID_HANDLE) destroyCopy(copy, generation);
}

void KeyCache::clear() {
  {
    std::lock_guard<std::mutex> lk(sessionMu_);
    closeSession();
  }
  std::unique_lock<std::shared_mutex> lk(mu_);
  keys_.clear();
}

void KeyCache::forgetUnlessHeld() {
  // Decided under sessionMu_: a key session another thread opens meanwhile (with copies in
  // use) is never closed by this; one that is open keeps the login, so the handles stand.
  std::lock_guard<std::mutex> held(sessionMu_);
  if (session_ != CK_INVALID_HANDLE) return;
  std::unique_lock<std::shared_mutex> lk(mu_);
  keys_.clear();
}

Status KeyCache::lookupLabel(CK_SESSION_HANDLE s, const std::string& label, CK_OBJECT_HANDLE& key, bool& dirty) {
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_BBOOL token = CK_TRUE;
  CK_ATTRIBUTE tmpl[] = {
      {CKA_CLASS, &cls, sizeof cls},
      {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
      {CKA_TOKEN, &token, sizeof token},  // never our own session copies
  };
  CK_RV rv = t_.f->C_FindObjectsInit(s, tmpl, 3);
  if (rv != CKR_OK) {
    dirty = true;
    return Status{rv, "C_FindObjectsInit"};
  }
  CK_OBJECT_HANDLE found[2];
  CK_ULONG count = 0;
  while (count < 2) {
    CK_ULONG n = 0;
    rv = t_.f->C_FindObjects(s, found + count, 2 - count, &n);
    if (rv != CKR_OK || n == 0) break;
    count += n;
  }
  CK_RV rvFinal = t_.f->C_FindObjectsFinal(s);
  if (rv != CKR_OK) {
    dirty = true;
    return Status{rv, "C_FindObjects"};
  }
  if (rvFinal != CKR_OK) {
    dirty = true;
    return Status{rvFinal, "C_FindObjectsFinal"};
  }
  if (count == 0) return Status{CKR_OK, "C_FindObjects", kKeyNotFound};
  if (count > 1) return Status{CKR_OK, "C_FindObjects", kKeyAmbiguous};
  key = found[0];
  return Status{};
}

void KeyCache::copyKey(CK_OBJECT_HANDLE token, Entry& e) {
  // e.attrs were read with the lookup.
  CK_RV rv;
  CK_BBOOL no = CK_FALSE;
  CK_ATTRIBUTE tmpl[] = {{CKA_TOKEN, &no, 1}};
  std::lock_guard<std::mutex> lk(sessionMu_);
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (session_ == CK_INVALID_HANDLE) {
      // The user is logged in (the caller holds a logged-in pool session), and a login
      // belongs to the application, so this session needs no C_Login of its own.
      rv = t_.f->C_OpenSession(t_.slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &session_);
      if (rv != CKR_OK) {
        // E.g. CKR_SESSION_COUNT: the token key serves; the copy is tried again at the next check.
        session_ = CK_INVALID_HANDLE;
        e.retryCopy = true;
        return;
      }
      sessionOpen_.store(true, std::memory_order_release);
    }
    CK_OBJECT_HANDLE copy = CK_INVALID_HANDLE;
    rv = t_.f->C_CopyObject(session_, token, tmpl, 1, &copy);
    if (rv == CKR_OK) {
      e.crypt = copy;
      e.generation = sessionGen_.load(std::memory_order_acquire);
      ++sessionCopies_;
      return;
    }
    if (rv != CKR_SESSION_HANDLE_INVALID && rv != CKR_SESSION_CLOSED) break;
    closeSession();  // that session is gone: one more try in a new one
  }
  // Refused (not copyable, not supported): the token key serves, and a key session holding
  // nothing is not kept open for it.
  if (sessionCopies_ == 0) closeSession();
}

Status KeyCache::keyUnchanged(CK_SESSION_HANDLE s, const std::string& label, CK_OBJECT_HANDLE token,
                              const KeyAttrs& attrs, bool& same, bool& dirty) {
  same = false;
  CK_OBJECT_HANDLE now = CK_INVALID_HANDLE;
  Status st = lookupLabel(s, label, now, dirty);
  if (!st.ok()) return dirty ? st : Status{};
  if (now != token) return Status{};
  KeyAttrs read;
  st = readKeyAttrs(t_.f, s, token, read, dirty);
  if (!st.ok()) return st;
  same = read == attrs;
  return Status{};
}

bool KeyCache::dead(const Entry& e) const {
  return e.copied() && e.generation != sessionGen_.load(std::memory_order_acquire);
}

bool KeyCache::due(const Entry& e, Use use, int64_t now) const {
  if (use == Use::Crypt && !e.copied() && !e.retryCopy) return false;  // the HSM checks the token key itself
  return now - e.checkedNs.load(std::memory_order_relaxed) >= int64_t{checkMs_} * 1000000;
}

bool KeyCache::cachedAttrs(const std::string& label, KeyAttrs& out) const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  auto it = keys_.find(label);
  if (it == keys_.end() || dead(it->second) || due(it->second, Use::Token, nanos(Clock::now()))) return false;
  out = it->second.attrs;
  return true;
}

Status KeyCache::attrsOf(const std::string& label, CK_SESSION_HANDLE s, bool& dirty, KeyAttrs& out) {
  Ref key;
  Status st = find(s, label, Use::Token, key, dirty);
  if (st.ok()) out = key.attrs;
  return st;
}

Status KeyCache::find(CK_SESSION_HANDLE s, const std::string& label, Use use, Ref& key, bool& dirty) {
  key = Ref{};
  bool check = false, retry = false;
  CK_OBJECT_HANDLE token = CK_INVALID_HANDLE, deadToken = CK_INVALID_HANDLE;
  KeyAttrs attrs;
  {
    std::shared_lock<std::shared_mutex> lk(mu_);
    auto it = keys_.find(label);
    // A copy from a key session that has closed since is gone (and its handle number may be
    // given to another object): never used, resolved afresh below.
    const bool isDead = it != keys_.end() && dead(it->second);
    if (isDead) deadToken = it->second.token;
    if (it != keys_.end() && !isDead) {
      Entry& e = it->second;
      key = refTo(e, use);
      const int64_t now = nanos(Clock::now());
      int64_t last = e.checkedNs.load(std::memory_order_relaxed);
      // One caller per period does the check; the others go on with the cached entry meanwhile.
      if (due(e, use, now) && e.checkedNs.compare_exchange_strong(last, now, std::memory_order_relaxed)) {
        check = true;
        retry = e.retryCopy;
        token = e.token;
        attrs = e.attrs;
      }
      if (!check) return Status{};
    }
  }
  if (deadToken != CK_INVALID_HANDLE) drop(label, deadToken);
  if (check) {
    if (!retry) {
      bool same = false;
      Status st = keyUnchanged(s, label, token, attrs, same, dirty);
      if (!st.ok()) return st;
      if (same) return Status{};
    }
    // Deleted, replaced or changed (the copy is destroyed), or no copy yet: resolve afresh.
    drop(label, token);
  }
  Entry fresh;
  Status st = lookupLabel(s, label, fresh.token, dirty);
  if (!st.ok()) return st;
  fresh.crypt = fresh.token;
  st = readKeyAttrs(t_.f, s, fresh.token, fresh.attrs, dirty);
  if (!st.ok()) return st;
  if (copies_) copyKey(fresh.token, fresh);
  bool stale = false;  // the copy's session closed meanwhile: use the token key, cache nothing
  {
    std::unique_lock<std::shared_mutex> lk(mu_);
    if (fresh.copied() && fresh.generation != sessionGen_.load(std::memory_order_acquire)) {
      stale = true;
    } else {
      auto [it, inserted] = keys_.try_emplace(label);
      Entry& e = it->second;
      if (inserted) {
        e.token = fresh.token;
        e.crypt = fresh.crypt;
        e.generation = fresh.generation;
        e.attrs = fresh.attrs;
        e.retryCopy = fresh.retryCopy;
        e.checkedNs.store(nanos(Clock::now()), std::memory_order_relaxed);
        key = refTo(e, use);
        return Status{};
      }
      // Another thread resolved it first: use its entry, discard our copy.
      key = refTo(e, use);
    }
  }
  if (stale) key = Ref{fresh.token, false, 0, fresh.attrs};
  if (fresh.copied()) destroyCopy(fresh.crypt, fresh.generation);
  return Status{};
}

bool KeyCache::copyGone(const std::string& label, const Ref& used) {
  if (!used.copy) return false;
  if (used.generation != sessionGen_.load(std::memory_order_acquire)) return true;
  std::shared_lock<std::shared_mutex> lk(mu_);
  auto it = keys_.find(label);
  return it == keys_.end() || it->second.crypt != used.handle;
}

}  // namespace xks
