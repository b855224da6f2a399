// The host-side containers of the CUDA runtime object (core/device_cuda.cpp): the resources owned per (host
// thread, stream) and a locked per-device cache. They hold no CUDA type, so the CPU tests check their logic in every
// build (tests/test_cuda_runtime.cpp); the CUDA build fills them with cuDNN/cuBLAS handles and workspaces, and with
// the convolution algorithm cache.
#pragma once
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

namespace tl::cuda_detail {

// One State per (host thread, stream), created on first use and destroyed (State's destructor frees what it holds)
// when taken out. Per thread as well as per stream because a cuDNN or cuBLAS handle must not be used by two host
// threads at once (cuDNN's thread-safety rule), and a scratch workspace handed to one thread must not be grown
// (freed) by another thread before the first has queued its work on it. Only the owning thread uses its State:
// get() returns a reference that stays valid until a take_* call removes the entry, and the take_* calls for
// another thread's or a stream's entries must not race with that thread's use of them (callers: thread exit,
// stream release before cudaStreamDestroy, runtime teardown with no GPU work in flight on other threads).
template <class State>
class ThreadStreamRegistry {
 public:
  using Key = std::pair<std::thread::id, const void*>;

  // This thread's State for `stream`, made by make() (returning std::unique_ptr<State>) on first use; when make()
  // throws, nothing is registered.
  template <class Make>
  State& get(const void* stream, Make&& make) {
    const Key key{std::this_thread::get_id(), stream};
    std::lock_guard<std::mutex> lock(m_);
    auto it = states_.find(key);
    if (it == states_.end()) it = states_.emplace(key, make()).first;
    return *it->second;
  }
  // Removes the entries of one stream (every thread), of one thread (every stream), or all of them; the caller
  // destroys what is returned outside the registry's lock.
  std::vector<std::unique_ptr<State>> take_stream(const void* stream) {
    return take_if([&](const Key& k) { return k.second == stream; });
  }
  std::vector<std::unique_ptr<State>> take_thread(std::thread::id thread) {
    return take_if([&](const Key& k) { return k.first == thread; });
  }
  std::vector<std::unique_ptr<State>> take_all() {
    return take_if([](const Key&) { return true; });
  }
  size_t size() const {
    std::lock_guard<std::mutex> lock(m_);
    return states_.size();
  }

 private:
  template <class Pred>
  std::vector<std::unique_ptr<State>> take_if(Pred&& pred) {
    std::vector<std::unique_ptr<State>> out;
    std::lock_guard<std::mutex> lock(m_);
    for (auto it = states_.begin(); it != states_.end();) {
      if (!pred(it->first)) {
        ++it;
        continue;
      }
      out.push_back(std::move(it->second));
      it = states_.erase(it);
    }
    return out;
  }

  mutable std::mutex m_;
  std::map<Key, std::unique_ptr<State>> states_;
};

// A cache per device behind a mutex: lookups take the device and the key apart (no combined key is built per
// lookup) and return copies, so that no reference outlives the lock.
template <class Key, class Value>
class DeviceCache {
 public:
  std::optional<Value> find(int device, const Key& key) const {
    std::lock_guard<std::mutex> lock(m_);
    auto d = maps_.find(device);
    if (d == maps_.end()) return std::nullopt;
    auto it = d->second.find(key);
    if (it == d->second.end()) return std::nullopt;
    return it->second;
  }
  void put(int device, const Key& key, Value value) {
    std::lock_guard<std::mutex> lock(m_);
    maps_[device][key] = std::move(value);
  }
  void clear() {
    std::lock_guard<std::mutex> lock(m_);
    maps_.clear();
  }
  size_t size() const {  // entries over all devices
    std::lock_guard<std::mutex> lock(m_);
    size_t n = 0;
    for (const auto& [device, map] : maps_) n += map.size();
    return n;
  }

 private:
  mutable std::mutex m_;
  std::map<int, std::map<Key, Value>> maps_;
};

}  // namespace tl::cuda_detail
