{{/*
Chart name, truncated to 63 characters (a DNS label).
*/}}
{{- define "greeter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of every object: fullnameOverride, else "<release>-<chart>" (or the release name when it
already holds the chart name).
*/}}
{{- define "greeter.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of the Service (and of the DNS name clients dial).
*/}}
{{- define "greeter.serviceName" -}}
{{- default (include "greeter.fullname" .) .Values.service.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
appProtocol of the gRPC Service port. Without TLS the pods speak cleartext HTTP/2 with prior
knowledge: kubernetes.io/h2c (KEP-3726). With TLS they speak HTTP/2 inside TLS, chosen by ALPN
h2; Kubernetes defines no h2-over-TLS name, so the port says https (the IANA name of HTTP over
TLS), which gateways that read appProtocol take as "originate TLS". An explicit
service.appProtocol wins, except kubernetes.io/h2c with TLS, which would send cleartext to a
TLS port.
*/}}
{{- define "greeter.appProtocol" -}}
{{- if .Values.service.appProtocol }}
{{- if and .Values.tls.enabled (eq .Values.service.appProtocol "kubernetes.io/h2c") }}
{{- fail "service.appProtocol kubernetes.io/h2c says cleartext HTTP/2, but with tls.enabled the pods serve TLS only: leave service.appProtocol empty (it becomes https) or name the TLS protocol your gateway expects" }}
{{- end }}
{{- .Values.service.appProtocol }}
{{- else if .Values.tls.enabled }}https
{{- else }}kubernetes.io/h2c
{{- end }}
{{- end }}

{{/*
The DNS name gateways check in the pods' certificate and send as SNI: tls.serverName, else the
Service's cluster name.
*/}}
{{- define "greeter.tlsServerName" -}}
{{- default (printf "%s.%s.svc" (include "greeter.serviceName" .) .Release.Namespace) .Values.tls.serverName }}
{{- end }}

{{- define "greeter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "greeter.labels" -}}
{{ include "greeter.selectorLabels" . }}
{{ include "greeter.commonLabels" . }}
{{- end }}

{{/*
The labels every object shares, whoever selects it.
*/}}
{{- define "greeter.commonLabels" -}}
helm.sh/chart: {{ include "greeter.chart" . }}
app.kubernetes.io/version: {{ include "greeter.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: greeter
{{- end }}

{{/*
Selector labels: name and instance, so two releases never select each other's pods.
*/}}
{{- define "greeter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "greeter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of the load test's pods (loadtest.enabled). Their name is <name>-load, so that no
selector of the servers' (the Service, PodDisruptionBudget, NetworkPolicy, spread
constraints) ever picks a load pod.
*/}}
{{- define "greeter.loadtestSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-load" (include "greeter.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: loadtest
{{- end }}

{{/*
Name of the load test's Job: short enough for its pods' host names, <job>-<index>.
*/}}
{{- define "greeter.loadtestName" -}}
{{- printf "%s-load" (include "greeter.fullname" . | trunc 52 | trimSuffix "-") }}
{{- end }}

{{- define "greeter.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/*
Image reference: repository@digest when a digest is set, else repository:tag.
*/}}
{{- define "greeter.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "greeter.imageTag" .) }}
{{- end }}
{{- end }}

{{/*
Seconds the kubelet waits after SIGTERM before SIGKILL. Derived from the same values the server
gets as GREETER_DRAIN_DELAY and GREETER_GRACE_PERIOD, so the two always agree:
drainDelay + gracePeriod + terminationMargin, rounded up.
*/}}
{{- define "greeter.terminationGracePeriodSeconds" -}}
{{- $s := .Values.server }}
{{- ceil (addf $s.drainDelay $s.gracePeriod $s.terminationMargin) | int }}
{{- end }}

{{/*
Refuse health-check timing that would miss the drain. Every gateway that takes a draining pod
out through its own active health checks (ALB, Emissary's Envoy) is timed from
albIngress.healthCheck: a pod that starts failing its checks is marked unhealthy at the latest
intervalSeconds x unhealthyThreshold + timeoutSeconds later, and marginSeconds of
server.drainDelay must remain after that for calls routed just before. Called with
(list $root "<setting that turned the checks on>" "<gateway>"); renders nothing.
*/}}
{{- define "greeter.checkHealthCheckTiming" -}}
{{- $root := index . 0 }}
{{- $setting := index . 1 }}
{{- $gateway := index . 2 }}
{{- $hc := $root.Values.albIngress.healthCheck }}
{{- $seen := add (mul $hc.intervalSeconds $hc.unhealthyThreshold) $hc.timeoutSeconds }}
{{- if gt (addf $seen $hc.marginSeconds) (float64 $root.Values.server.drainDelay) }}
{{- fail (printf "%s: %s would mark a draining pod unhealthy only after albIngress.healthCheck.intervalSeconds x unhealthyThreshold + timeoutSeconds = %d x %d + %d = %d s, which with marginSeconds %v does not fit in server.drainDelay %v s: lower the interval or the threshold, or raise server.drainDelay" $setting $gateway (int $hc.intervalSeconds) (int $hc.unhealthyThreshold) (int $hc.timeoutSeconds) (int $seen) $hc.marginSeconds $root.Values.server.drainDelay) }}
{{- end }}
{{- end }}

{{/*
The KubernetesEndpointResolver the gRPC Mapping uses with emissary.healthChecks.enabled: the
chart's own (<fullname>-endpoint, kubernetesendpointresolver.yaml) or
emissary.endpointResolver.name, exactly one of them.
*/}}
{{- define "greeter.emissaryResolver" -}}
{{- $r := .Values.emissary.endpointResolver }}
{{- if and $r.enabled $r.name }}
{{- fail (printf "emissary.endpointResolver: set either enabled (the chart renders a KubernetesEndpointResolver) or name (the existing resolver %q), not both" $r.name) }}
{{- else if $r.enabled }}
{{- printf "%s-endpoint" (include "greeter.fullname" . | trunc 54 | trimSuffix "-") }}
{{- else if $r.name }}
{{- $r.name }}
{{- else }}
{{- fail "emissary.healthChecks.enabled needs an endpoint resolver: Emissary ignores health_checks on a Mapping that is not resolved through a KubernetesEndpointResolver. Set emissary.endpointResolver.enabled (the chart renders one) or emissary.endpointResolver.name (an existing one, e.g. endpoint)" }}
{{- end }}
{{- end }}

{{/*
Name of the Secret holding the auth tokens file.
*/}}
{{- define "greeter.authSecretName" -}}
{{- default (printf "%s-auth" (include "greeter.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "greeter.tlsDir" -}}/etc/greeter/tls{{- end }}
{{- define "greeter.authDir" -}}/etc/greeter/auth{{- end }}

{{/*
The server's settings as GREETER_* environment, in one place. Every setting the chart controls
is mapped here and nowhere else.
*/}}
{{- define "greeter.env" -}}
- name: GREETER_HOST
  value: "[::]"
- name: GREETER_PORT
  value: {{ .Values.server.port | quote }}
- name: GREETER_METRICS_PORT
  value: {{ ternary .Values.metrics.port 0 .Values.metrics.enabled | quote }}
- name: GREETER_DRAIN_DELAY
  value: {{ .Values.server.drainDelay | quote }}
- name: GREETER_GRACE_PERIOD
  value: {{ .Values.server.gracePeriod | quote }}
- name: GREETER_REFLECTION
  value: {{ .Values.server.reflection | quote }}
- name: GREETER_MAX_CONNECTION_AGE
  value: {{ .Values.server.maxConnectionAge | quote }}
- name: GREETER_KEEPALIVE_MIN_TIME
  value: {{ .Values.server.keepaliveMinTime | quote }}
- name: GREETER_LOG_LEVEL
  value: {{ .Values.server.logLevel | quote }}
- name: GREETER_LOG_FORMAT
  value: {{ .Values.server.logFormat | quote }}
- name: GREETER_ACCESS_LOG
  value: {{ .Values.server.accessLog | quote }}
- name: GREETER_WORKERS
  value: {{ .Values.server.workers | quote }}
- name: GREETER_CLUSTER_NAME
  value: {{ .Values.cluster.name | quote }}
{{- with .Values.cluster.zone }}
- name: GREETER_ZONE
  value: {{ . | quote }}
{{- end }}
- name: GREETER_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: GREETER_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: GREETER_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- if .Values.interop.enabled }}
- name: GREETER_INTEROP
  value: "true"
{{- end }}
{{- if .Values.web.enabled }}
- name: GREETER_WEB_PORT
  value: {{ .Values.web.port | quote }}
{{- with .Values.web.corsOrigins }}
- name: GREETER_WEB_CORS_ORIGINS
  value: {{ join "," . | quote }}
{{- end }}
{{- end }}
{{- if .Values.tls.enabled }}
- name: GREETER_TLS_CERT
  value: {{ printf "%s/tls.crt" (include "greeter.tlsDir" .) | quote }}
- name: GREETER_TLS_KEY
  value: {{ printf "%s/tls.key" (include "greeter.tlsDir" .) | quote }}
{{- if .Values.tls.clientCA }}
- name: GREETER_TLS_CLIENT_CA
  value: {{ printf "%s/ca.crt" (include "greeter.tlsDir" .) | quote }}
{{- end }}
{{- end }}
{{- if .Values.auth.enabled }}
- name: GREETER_AUTH_ENABLED
  value: "true"
- name: GREETER_AUTH_TOKENS_FILE
  value: {{ printf "%s/tokens" (include "greeter.authDir" .) | quote }}
- name: GREETER_AUTH_EXEMPT
  value: {{ .Values.auth.exempt | quote }}
{{- end }}
{{- if .Values.fault.enabled }}
- name: GREETER_FAULT_ENABLED
  value: "true"
- name: GREETER_FAULT_DELAY
  value: {{ .Values.fault.delay | quote }}
- name: GREETER_FAULT_DELAY_PERCENT
  value: {{ .Values.fault.delayPercent | quote }}
- name: GREETER_FAULT_STATUS
  value: {{ .Values.fault.status | quote }}
- name: GREETER_FAULT_STATUS_PERCENT
  value: {{ .Values.fault.statusPercent | quote }}
{{- end }}
{{- include "greeter.tracingEnv" (list . (.Values.tracing.serviceName | default (include "greeter.fullname" .))) }}
{{- with .Values.server.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The OpenTelemetry SDK's standard environment, from the tracing values (nothing when off), for a
service name: the pods' and the loadtest Job's. (list $ serviceName)
*/}}
{{- define "greeter.tracingEnv" -}}
{{- $ := index . 0 }}
{{- $t := $.Values.tracing }}
{{- if $t.enabled }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ required "tracing.endpoint is required when tracing.enabled" $t.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $t.protocol | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ index . 1 | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $t.sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $t.samplerArg | toString | quote }}
{{- with $t.resourceAttributes }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ $pairs := list }}{{ range $key, $value := . }}{{ $pairs = append $pairs (printf "%s=%s" $key (toString $value)) }}{{ end }}{{ join "," $pairs | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
One probe on the gRPC health service. The kubelet's native gRPC probe speaks cleartext only, so
with TLS on the probe runs `greeter health` in the container instead. With tls.clientCA the server
refuses a client without a certificate, so the probe presents the pod's own tls.crt (which must
then allow client authentication too).
*/}}
{{- define "greeter.probe" -}}
{{- $root := index . 0 }}
{{- $p := index . 1 }}
{{- if $root.Values.tls.enabled -}}
exec:
  command:
    - greeter
    - health
    - {{ printf "localhost:%v" $root.Values.server.port | quote }}
    - --tls
    - --insecure
    {{- if $root.Values.tls.clientCA }}
    - --cert
    - {{ printf "%s/tls.crt" (include "greeter.tlsDir" $root) | quote }}
    - --key
    - {{ printf "%s/tls.key" (include "greeter.tlsDir" $root) | quote }}
    {{- end }}
    - --service
    - {{ $root.Values.probes.service | quote }}
    - -t
    - {{ $p.timeoutSeconds | quote }}
{{- else -}}
grpc:
  port: {{ $root.Values.server.port }}
  service: {{ $root.Values.probes.service | quote }}
{{- end }}
periodSeconds: {{ $p.periodSeconds }}
failureThreshold: {{ $p.failureThreshold }}
timeoutSeconds: {{ $p.timeoutSeconds }}
{{- end }}
