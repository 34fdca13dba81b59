#include "locate_cache.h"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace urunc::bootfs::daemon {

bool runtime_watched(const std::vector<std::string>& runtimes, const std::string& runtime) {
  return std::ranges::any_of(runtimes,
                             [&](const std::string& r) { return r == "*" || r == runtime; });
}

LocateCache::LocateCache(std::unique_ptr<snap::Client> base, std::vector<std::string> runtimes,
                         LocateListener listener)
    : base_(std::move(base)), runtimes_(std::move(runtimes)), listener_(std::move(listener)) {
  worker_ = std::thread([this] { work(); });
  watch_ =
      base_->watch_containers({.on_subscribed =
                                   [this] {
                                     // Start afresh: what was learnt
                                     // while no stream was open may be
                                     // stale by now.
                                     std::lock_guard lock(mutex_);
                                     forget_all();
                                     seed_wanted_ = true;
                                     cv_.notify_all();
                                   },
                               .on_event = [this](const snap::ContainerEvent& e) { on_event(e); },
                               .on_gap = [this] { on_gap(); }});
}

LocateCache::~LocateCache() {
  watch_.reset();
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  worker_.join();
}

void LocateCache::on_event(const snap::ContainerEvent& event) {
  Key key{event.ns, event.id};
  std::lock_guard lock(mutex_);
  ++counts_.events;
  if (entries_.erase(key) + awaited_.erase(key) > 0 && listener_.forgotten)
    listener_.forgotten(key.first, key.second);
  if (event.kind != snap::ContainerEvent::Kind::created ||
      !runtime_watched(runtimes_, event.runtime))
    return;
  await(std::move(key));
}

void LocateCache::await(Key key) {
  const std::uint64_t generation = ++generation_;
  awaited_[key] = generation;
  queue_.push_back({std::move(key), generation});
  cv_.notify_all();
}

void LocateCache::seed() {
  auto namespaces = base_->list_namespaces();
  if (!namespaces) return;
  std::vector<std::string> filters;
  if (std::ranges::find(runtimes_, "*") == runtimes_.end())
    for (const auto& r : runtimes_) filters.push_back("runtime.name==\"" + r + "\"");
  for (const auto& ns : *namespaces) {
    auto listed = base_->with_namespace(ns)->list_containers(filters);
    if (!listed) continue;
    std::lock_guard lock(mutex_);
    for (const auto& c : *listed) {
      Key key{ns, c.id};
      if (!entries_.contains(key) && !awaited_.contains(key)) await(std::move(key));
    }
  }
}

void LocateCache::on_gap() {
  std::lock_guard lock(mutex_);
  ++counts_.gaps;
  forget_all();
  spdlog::info(
      "containerd at {}: event stream broken; located containers forgotten until it is "
      "back",
      base_->address());
}

void LocateCache::forget_all() {
  entries_.clear();
  awaited_.clear();
  queue_.clear();
  if (listener_.forgotten_all) listener_.forgotten_all();
}

std::optional<Located> LocateCache::locate(const Key& key) const {
  auto client = base_->with_namespace(key.first);
  auto container = client->get_container(key.second);
  if (!container || container->snapshot_key.empty() || container->snapshotter.empty())
    return std::nullopt;
  auto info = client->stat(container->snapshotter, container->snapshot_key);
  if (!info || info->parent.empty()) return std::nullopt;
  return Located{container->snapshotter, container->snapshot_key, info->parent};
}

void LocateCache::work() {
  std::unique_lock lock(mutex_);
  while (true) {
    cv_.wait(lock, [&] { return stopping_ || seed_wanted_ || !queue_.empty(); });
    if (stopping_) return;
    if (seed_wanted_) {
      seed_wanted_ = false;
      lock.unlock();
      seed();
      lock.lock();
      continue;
    }
    Pending next = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    auto located = locate(next.key);
    lock.lock();
    const auto it = awaited_.find(next.key);
    if (it == awaited_.end() || it->second != next.generation) continue;
    awaited_.erase(it);
    if (!located || entries_.size() >= kMaxEntries) continue;
    ++counts_.located;
    if (listener_.located) listener_.located(next.key.first, next.key.second, *located);
    entries_[next.key] = std::move(*located);
  }
}

std::optional<Located> LocateCache::find(const std::string& ns, const std::string& id) {
  std::lock_guard lock(mutex_);
  const auto it = entries_.find({ns, id});
  if (it == entries_.end()) return std::nullopt;
  ++counts_.hits;
  return it->second;
}

LocateCache::Counts LocateCache::counts() const {
  std::lock_guard lock(mutex_);
  Counts out = counts_;
  out.entries = entries_.size();
  return out;
}

}  // namespace urunc::bootfs::daemon
