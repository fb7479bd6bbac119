-- Argo CD health of leaderworkerset.x-k8s.io LeaderWorkerSet: the workload of a multi-node
-- ModelDeployment (gpu.nodesPerReplica above 1), one group of pods per replica. Read from the
-- LWS controller's status, which counts groups and reports no observedGeneration:
--   no status yet                                        -> Progressing
--   UpdateInProgress=True                                -> Progressing (groups updated of wanted)
--   Available=True and every wanted group ready          -> Healthy
--   anything else                                        -> Progressing (groups ready of wanted)
-- Written for Argo CD's Lua 5.1 (gopher-lua).
local hs = {status = "Progressing", message = "Waiting for the LeaderWorkerSet controller to report status"}

if obj.status == nil then
  return hs
end

local function find(type_)
  if obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local wanted = 1
if obj.spec ~= nil and obj.spec.replicas ~= nil then
  wanted = obj.spec.replicas
end
local ready = obj.status.readyReplicas or 0
local updated = obj.status.updatedReplicas or 0

local updating = find("UpdateInProgress")
if updating ~= nil and updating.status == "True" then
  hs.message = "Rolling update: " .. tostring(updated) .. "/" .. tostring(wanted) .. " groups updated"
  return hs
end

local available = find("Available")
if wanted == 0 or (available ~= nil and available.status == "True" and ready >= wanted) then
  hs.status = "Healthy"
end
hs.message = tostring(ready) .. "/" .. tostring(wanted) .. " groups ready"
return hs
