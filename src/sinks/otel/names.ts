/** The sink's name and its component label in tokenmeter_internal_errors_total. */
export const OTEL_COMPONENT = 'otel';
