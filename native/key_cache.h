// The key cache: label -> token key handle and attributes, and (with key copies) a
// session-object copy of each token key in a session of its own. See key_cache.cc for the rules.
#pragma once

#include <p11-kit/pkcs11.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>

#include "key_attrs.h"
#include "status.h"
#include "token.h"

namespace xks {

class KeyCache {
 public:
  // Crypt: the handle encrypt/decrypt use (the copy, when there is one); Token: the token
  // object itself and its attributes (key metadata), confirmed at most checkMs ago.
  enum class Use : uint8_t { Crypt, Token };

  // copies: encrypt and decrypt with a session-object copy of each token key; the token key
  // is looked up again every checkMs and the copy dropped when it is gone or changed.
  KeyCache(const Token& token, bool copies, uint32_t checkMs) : t_(token), copies_(copies), checkMs_(checkMs) {}
  KeyCache(const KeyCache&) = delete;
  KeyCache& operator=(const KeyCache&) = delete;

  // Runs op(handle) with the label's key, looked up again and retried once when the handle
  // turned out invalid or the copy used went away meanwhile. With Use::Crypt, a key that is
  // not AES-256 is refused (XKS_KEY_SPEC) before the HSM sees a call.
  template <class F>
  Status withKey(const std::string& label, CK_SESSION_HANDLE s, Use use, bool& dirty, F&& op);

  // The label's token key attributes (key metadata): from the cache while they were confirmed
  // less than checkMs ago, else after a re-check (lookup and attributes) in session s.
  Status attrsOf(const std::string& label, CK_SESSION_HANDLE s, bool& dirty, KeyAttrs& out);
  // The label's attributes without any PKCS#11 call, when cached and confirmed less than
  // checkMs ago (no session needed); false: use attrsOf.
  bool cachedAttrs(const std::string& label, KeyAttrs& out) const;

  // Forgets the label's entry (and destroys its copy); with `handle`, only if the entry still
  // uses that handle (as its copy or token key).
  void drop(const std::string& label, CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE);
  // Closes the key session (destroying the copies) and forgets every entry.
  void clear();
  // Empties the cache unless the key session holds the login.
  void forgetUnlessHeld();

  uint32_t copies() const;  // cached keys that use a session copy
  bool sessionOpen() const { return sessionOpen_.load(std::memory_order_relaxed); }

 private:
  struct Entry {
    CK_OBJECT_HANDLE token = CK_INVALID_HANDLE;
    CK_OBJECT_HANDLE crypt = CK_INVALID_HANDLE;  // == token, or a copy in session_
    uint64_t generation = 0;                     // sessionGen_ the copy was made in
    KeyAttrs attrs;                              // the token key's, read with the lookup
    bool retryCopy = false;                      // the key session could not be opened: try again at the next check
    std::atomic<int64_t> checkedNs{0};           // last confirmation that the token key is unchanged
    bool copied() const { return crypt != token; }
  };
  // The handle a call uses, and whether it is a copy (made in key session `generation`).
  struct Ref {
    CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
    bool copy = false;
    uint64_t generation = 0;
    KeyAttrs attrs;
  };
  static Ref refTo(const Entry& e, Use use) {
    return use == Use::Token ? Ref{e.token, false, 0, e.attrs} : Ref{e.crypt, e.copied(), e.generation, e.attrs};
  }
  // dead: a copy from a key session that has closed since (never used). due: a re-check is
  // due, checkMs after the last (Token: always; Crypt: when it uses a copy or waits to make one).
  bool dead(const Entry& e) const;
  bool due(const Entry& e, Use use, int64_t now) const;

  Status find(CK_SESSION_HANDLE s, const std::string& label, Use use, Ref& key, bool& dirty);
  // The copy `used` is no longer the label's (destroyed or replaced since the call took it).
  bool copyGone(const std::string& label, const Ref& used);
  Status lookupLabel(CK_SESSION_HANDLE s, const std::string& label, CK_OBJECT_HANDLE& key, bool& dirty);
  void copyKey(CK_OBJECT_HANDLE token, Entry& e);
  // The label still names `token` with the same attributes.
  Status keyUnchanged(CK_SESSION_HANDLE s, const std::string& label, CK_OBJECT_HANDLE token, const KeyAttrs& attrs,
                      bool& same, bool& dirty);
  void closeSession();                                           // sessionMu_ held
  void destroyCopy(CK_OBJECT_HANDLE copy, uint64_t generation);  // takes sessionMu_

  const Token& t_;
  const bool copies_;
  const uint32_t checkMs_;

  mutable std::shared_mutex mu_;
  std::unordered_map<std::string, Entry> keys_;
  // The session that owns the key copies (closing it destroys them). Never in the pool;
  // while it is open the user stays logged in, so cached handles stay valid.
  std::mutex sessionMu_;
  CK_SESSION_HANDLE session_ = CK_INVALID_HANDLE;
  uint32_t sessionCopies_ = 0;           // live copies in session_ (sessionMu_)
  std::atomic<uint64_t> sessionGen_{1};  // bumped whenever session_ closes
  std::atomic<bool> sessionOpen_{false};
};

template <class F>
Status KeyCache::withKey(const std::string& label, CK_SESSION_HANDLE s, Use use, bool& dirty, F&& op) {
  Ref key;
  Status st = find(s, label, use, key, dirty);
  if (!st.ok()) return st;
  // XKS Encrypt / Decrypt are AES-256-GCM: any other key (AES-128, a generic secret) is refused
  // before the HSM sees a call.
  if (use == Use::Crypt && !key.attrs.aes256()) return Status{CKR_OK, nullptr, kKeySpec};
  st = op(key.handle);
  if (st.rv == CKR_KEY_HANDLE_INVALID || st.rv == CKR_OBJECT_HANDLE_INVALID) {
    // The object (or its copy) went away or was re-created: look it up again, retry once.
    drop(label, key.handle);
  } else if (st.rv == CKR_OK || !copyGone(label, key)) {
    return st;
  }
  // Also when the copy used was destroyed meanwhile by another thread (a check found the
  // key changed, or the key session closed): a module may then fail the call with any code
  // (SoftHSM2: CKR_KEY_TYPE_INCONSISTENT), which says nothing about the key itself.
  st = find(s, label, use, key, dirty);
  if (!st.ok()) return st;
  if (use == Use::Crypt && !key.attrs.aes256()) return Status{CKR_OK, nullptr, kKeySpec};
  return op(key.handle);
}

}  // namespace xks
