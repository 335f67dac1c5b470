#include "registry.h"

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <vector>

#include "engine.h"

namespace xks {
namespace registry {

namespace {

std::mutex g_liveMu;
std::vector<Core*>& liveCores() {
  static auto* v = new std::vector<Core*>();  // never destroyed
  return *v;
}
std::once_flag g_exitHookOnce;

void stopAllAtExit() {
  std::vector<Core*> cores;
  {
    std::lock_guard<std::mutex> lk(g_liveMu);
    cores = liveCores();
  }
  for (Core* c : cores) c->abort();  // the jobs are deliberately leaked: the process is exiting
}

}  // namespace

std::shared_timed_mutex& contextMutex() {
  static auto* m = new std::shared_timed_mutex();  // never destroyed
  return *m;
}

std::atomic<uint32_t>& exclusivePending() {
  static auto* a = new std::atomic<uint32_t>(0);
  return *a;
}

void add(Core* c) {
  std::lock_guard<std::mutex> lk(g_liveMu);
  auto& v = liveCores();
  if (std::find(v.begin(), v.end(), c) == v.end()) v.push_back(c);
}

void remove(Core* c) {
  std::lock_guard<std::mutex> lk(g_liveMu);
  auto& v = liveCores();
  v.erase(std::remove(v.begin(), v.end(), c), v.end());
}

void installExitHook() {
  std::call_once(g_exitHookOnce, [] { std::atexit(stopAllAtExit); });
}

void forgetOthersOn(const Core* self, const Module* m) {
  std::lock_guard<std::mutex> lk(g_liveMu);
  for (Core* c : liveCores()) {
    if (c != self) c->forgetForReinit(m);
  }
}

}  // namespace registry
}  // namespace xks
