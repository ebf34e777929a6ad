// The API docs page: Swagger UI (vendored) rendering this server's OpenAPI description.
/* global SwaggerUIBundle */
window.addEventListener('DOMContentLoaded', () => {
  window.docs = SwaggerUIBundle({
    url: document.body.dataset.openapiUrl,
    dom_id: '#swagger-ui',
    // Deep links put a link inside each operation's expand button, which
    // nests one control in another (screen readers and keyboards trip on it).
    deepLinking: false,
    presets: [SwaggerUIBundle.presets.apis],
    layout: 'BaseLayout',
    // The badge would send the description to validator.swagger.io: nothing leaves this server.
    validatorUrl: null,
    tryItOutEnabled: false,
    defaultModelsExpandDepth: 0,
  });
});
