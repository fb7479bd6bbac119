-- Argo CD health of turnpike.dev ModelDeployment and CapacityTier, following kstatus:
--   no status yet                                  -> Progressing
--   status older than metadata.generation          -> Progressing (the operator has not seen the change)
--   Degraded=True                                  -> Degraded (its message)
--   Ready=True                                     -> Healthy
--   anything else                                  -> Progressing (why: Ready's or Progressing's message)
-- SLOMet=False (current) is a warning, not Degraded: the health stays what the rules above
-- say, and the message ends with "SLO not met (<reason>): <message>".
-- "Older" compares status.observedGeneration and the condition's own observedGeneration
-- (when set) with metadata.generation. Written for Argo CD's Lua 5.1 (gopher-lua).
local hs = {status = "Progressing", message = "Waiting for the Turnpike operator to report status"}

local function find(conditions, type_)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

if obj.status == nil then
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

-- True when `observed` is known and behind the object's generation.
local function stale(observed)
  return generation ~= nil and observed ~= nil and observed < generation
end
-- True when `observed` is known to match the object's generation.
local function current(observed)
  return generation ~= nil and observed ~= nil and observed == generation
end

local conditions = obj.status.conditions
local ready = find(conditions, "Ready")
local degraded = find(conditions, "Degraded")
local progressing = find(conditions, "Progressing")
local slo = find(conditions, "SLOMet")

-- hs with the SLO warning appended to its message when SLOMet is False for this generation.
local function finish()
  if slo == nil or slo.status ~= "False" or stale(slo.observedGeneration) then
    return hs
  end
  local note = "SLO not met"
  if slo.reason ~= nil and slo.reason ~= "" then
    note = note .. " (" .. slo.reason .. ")"
  end
  if slo.message ~= nil and slo.message ~= "" then
    note = note .. ": " .. slo.message
  end
  if hs.message ~= nil and hs.message ~= "" then
    hs.message = hs.message .. "; " .. note
  else
    hs.message = note
  end
  return hs
end

if stale(obj.status.observedGeneration) then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
    .. " (status is for generation " .. tostring(obj.status.observedGeneration) .. ")"
  return hs
end

if degraded ~= nil and degraded.status == "True" and not stale(degraded.observedGeneration) then
  hs.status = "Degraded"
  hs.message = text(degraded, "Degraded")
  return finish()
end

if ready ~= nil and ready.status == "True" then
  -- Healthy only for a status known to describe the current generation.
  local observed = ready.observedGeneration
  if observed == nil then
    observed = obj.status.observedGeneration
  end
  if current(observed) then
    hs.status = "Healthy"
    hs.message = text(ready, "Ready")
    return finish()
  end
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return finish()
end

if progressing ~= nil and progressing.status == "True" then
  hs.message = text(progressing, "Progressing")
elseif ready ~= nil then
  hs.message = text(ready, "Not ready")
end
return finish()
